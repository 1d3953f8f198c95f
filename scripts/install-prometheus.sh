#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package) when they are missing: the alert
# rules are checked with promtool, and a test scrapes a running efms with a real Prometheus.
#
#   scripts/install-prometheus.sh
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus.sh: prometheus is missing and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || {
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}
