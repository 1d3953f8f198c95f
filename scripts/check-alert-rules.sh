#!/usr/bin/env bash
# Checks the Prometheus alerting rules shipped in deploy/prometheus with promtool (Debian's
# `prometheus` package, installed when missing).
#
#   scripts/check-alert-rules.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "check-alert-rules.sh: promtool is missing and installing it needs root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  }
fi
promtool check rules deploy/prometheus/*.yml
