#!/usr/bin/env bash
# Events-out benchmark (issue acceptance: 100 webhooks and 1,000 WebSocket clients subscribed, 50
# commits/s for a minute): a release efms on its own database, then efms-events-load. Prints the
# WebSocket and webhook delivery latency from each commit's answer to its receipt (p50, p99, max),
# what arrived, and the control plane's CPU and memory.
# Settings: EFMS_BENCH_WEBHOOKS (100), EFMS_BENCH_SOCKETS (1000), EFMS_BENCH_STALLED (50),
# EFMS_BENCH_RATE (50), EFMS_BENCH_SECONDS (60).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
ulimit -n 65536 2>/dev/null || true
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms --bin efms-events-load
BIN="${CARGO_TARGET_DIR:-target}/release"
# The receiver is on loopback.
export EFMS_WEBHOOK_ALLOW_PRIVATE=true
# shellcheck source=scripts/bench-server.sh
source scripts/bench-server.sh efms_bench_events
EFMS_LOAD_TOKEN=$("$BIN/efms" token --role system --subject bench --ttl 2h) \
  "$BIN/efms-events-load" --http "http://127.0.0.1:$PORT" \
  --webhooks "${EFMS_BENCH_WEBHOOKS:-100}" --sockets "${EFMS_BENCH_SOCKETS:-1000}" \
  --stalled "${EFMS_BENCH_STALLED:-50}" --rate "${EFMS_BENCH_RATE:-50}" \
  --seconds "${EFMS_BENCH_SECONDS:-60}" --server-pid "$SERVER"
