#!/usr/bin/env bash
# Fleet benchmark (issue acceptance: 1,000 agents of 20 containers): a release efms on its own
# database, then efms-fleet-load standing for the agents (heartbeat and usage every interval, one
# lifecycle event per container per minute). Prints the control plane's and Postgres's CPU, the
# reports acknowledged per second, what the database grows by per hour, and GET /vms and
# GET /containers?state=running under that load.
# Settings: EFMS_BENCH_AGENTS (default 1000), EFMS_BENCH_CONTAINERS (20), EFMS_BENCH_SECONDS (120);
# EFMS_BENCH_BIN: a directory holding efms and efms-fleet-load built before (a baseline), used as
# they are instead of building this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
ulimit -n 65536 2>/dev/null || true
export SQLX_OFFLINE=true
if [ -n "${EFMS_BENCH_BIN:-}" ]; then
  BIN=$EFMS_BENCH_BIN
else
  cargo build --release --quiet --bin efms --bin efms-fleet-load
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
# shellcheck source=scripts/bench-server.sh
source scripts/bench-server.sh efms_bench_fleet
EFMS_LOAD_TOKEN=$("$BIN/efms" token --role system --subject bench --ttl 2h) \
  "$BIN/efms-fleet-load" --http "http://127.0.0.1:$PORT" --grpc "127.0.0.1:$GRPC" \
  --agents "${EFMS_BENCH_AGENTS:-1000}" --containers "${EFMS_BENCH_CONTAINERS:-20}" \
  --seconds "${EFMS_BENCH_SECONDS:-120}" --server-pid "$SERVER" --database "$PG/$DB"
