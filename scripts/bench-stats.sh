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
PG="postgres://postgres@127.0.0.1:5432"
DB=efms_bench_stats
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GRPC=$(free_port)
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
DATABASE_URL="$PG/$DB" EFMS_HTTP_ADDR="127.0.0.1:$PORT" EFMS_GRPC_ADDR="127.0.0.1:$GRPC" \
  EFMS_DB_MAX_CONNECTIONS=32 EFMS_LOG=warn "$BIN/efms" serve > /tmp/efms-bench-stats.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
EFMS_LOAD_TOKEN=$("$BIN/efms" token --role system --subject bench --ttl 2h) \
  "$BIN/efms-stats-load" --http "http://127.0.0.1:$PORT" --grpc "127.0.0.1:$GRPC" \
  --proxies "${EFMS_BENCH_PROXIES:-1000}" --clusters "${EFMS_BENCH_CLUSTERS:-20}" \
  --seconds "${EFMS_BENCH_SECONDS:-120}" --server-pid "$SERVER" --database "$PG/$DB"
