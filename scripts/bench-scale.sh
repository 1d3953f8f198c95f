#!/usr/bin/env bash
# Scale benchmark (issue 14): what a commit costs as the tenant grows. Against a release efms on
# its own database: builds one tenant per size by bulks of EFMS_BENCH_CHUNK creations, times
# EFMS_BENCH_PUTS single PUTs (replacing one cluster each, one at a time) in each, reads efms's
# resident memory, then times a bulk of EFMS_BENCH_BULK creations into an empty tenant and into the
# largest one. Prints a Markdown table (progress on stderr).
# Settings: EFMS_BENCH_SIZES (default 100,10000,100000), EFMS_BENCH_PUTS (200), EFMS_BENCH_BULK
# (10000), EFMS_BENCH_CHUNK (10000), EFMS_BENCH_BIN (a built efms to measure instead of building
# this tree's), EFMS_BENCH_EVENTS (fill the log to this many events, then time reads in its
# history and `efms replay`; default 0: skipped), EFMS_BENCH_KEEP_DB=1 with EFMS_BENCH_ONLY=history
# (measure the history reads and the replay again on the database an earlier run left),
# EFMS_BENCH_REPLAY=0 (skip the replay).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
export SQLX_OFFLINE=true
if [ -n "${EFMS_BENCH_BIN:-}" ]; then
  BIN=$EFMS_BENCH_BIN
else
  cargo build --release --quiet --bin efms
  BIN="${CARGO_TARGET_DIR:-target}/release/efms"
fi
PG="postgres://postgres@127.0.0.1:5432"
DB=efms_bench_scale
if [ -z "${EFMS_BENCH_KEEP_DB:-}" ]; then
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GRPC=$(free_port)
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
DATABASE_URL="$PG/$DB" EFMS_HTTP_ADDR="127.0.0.1:$PORT" EFMS_GRPC_ADDR="127.0.0.1:$GRPC" EFMS_LOG=warn \
  "$BIN" serve > /tmp/efms-bench-scale.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
TOKEN=$("$BIN" token --role system --subject bench --ttl 12h)
DATABASE_URL="$PG/$DB" EFMS_BENCH_EFMS="$BIN" python3 scripts/bench/scale.py "http://127.0.0.1:$PORT" "$TOKEN" "$SERVER"
