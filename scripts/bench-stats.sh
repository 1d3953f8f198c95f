#!/usr/bin/env bash
# Statistics benchmark (issue acceptance: 1,000 proxies streaming 300 statistics every 10 s): a
# release efms on its own database, then efms-stats-load standing for the proxies' metrics service
# sinks. Prints the control plane's and Postgres's CPU, the rows and bytes the statistics tables
# grow by per hour, and a cluster's series and a group's health read under that load.
# Settings: EFMS_BENCH_PROXIES (default 1000), EFMS_BENCH_CLUSTERS (20: 300 statistics),
# EFMS_BENCH_SECONDS (120).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
ulimit -n 65536 2>/dev/null || true
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms --bin efms-stats-load
BIN="${CARGO_TARGET_DIR:-target}/release"
# shellcheck source=scripts/bench-server.sh
source scripts/bench-server.sh efms_bench_stats
EFMS_LOAD_TOKEN=$("$BIN/efms" token --role system --subject bench --ttl 2h) \
  "$BIN/efms-stats-load" --http "http://127.0.0.1:$PORT" --grpc "127.0.0.1:$GRPC" \
  --proxies "${EFMS_BENCH_PROXIES:-1000}" --clusters "${EFMS_BENCH_CLUSTERS:-20}" \
  --seconds "${EFMS_BENCH_SECONDS:-120}" --server-pid "$SERVER" --database "$PG/$DB"
