#!/usr/bin/env bash
# Checks the Prometheus alerting rules shipped in deploy/prometheus with promtool (installed by
# scripts/install-prometheus.sh when missing).
#
#   scripts/check-alert-rules.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-prometheus.sh
promtool check rules deploy/prometheus/*.yml
