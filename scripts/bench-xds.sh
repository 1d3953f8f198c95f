#!/usr/bin/env bash
# xDS scale benchmark (NFR-PF-002): a release efms on its own database, then efms-xds-load opening
# N ADS streams that behave as Envoy does (subscribe, ACK; every 100th stream NACKs routes) and
# committing route changes through the API. Prints, per protocol and N: time for every stream to
# sync, commit-to-answered p50/p99 per stream and commit-to-all-answered, and the control plane's
# RSS (per stream) and CPU, in all and per push-and-ACK (the CPU the control plane spent during the
# changes, divided by the responses the streams received and answered meanwhile).
# Settings: EFMS_BENCH_STREAMS (default "1000 10000"), EFMS_BENCH_PROTOCOLS (default "sotw delta"),
# EFMS_BENCH_CHANGES (default 5), EFMS_BENCH_EFMS (an efms binary to measure instead of the one built
# here, e.g. one built from an earlier commit, against the same load generator), EFMS_BENCH_FILL
# (clusters added to the tenant first, default 0) and EFMS_BENCH_ATTACH (how many of them the
# streams' group attaches, default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || true
STREAMS=${EFMS_BENCH_STREAMS:-"1000 10000"}
PROTOCOLS=${EFMS_BENCH_PROTOCOLS:-"sotw delta"}
CHANGES=${EFMS_BENCH_CHANGES:-5}
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms --bin efms-xds-load
BIN="${CARGO_TARGET_DIR:-target}/release"
EFMS="${EFMS_BENCH_EFMS:-$BIN/efms}"
PG="postgres://postgres@127.0.0.1:5432"
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; wait 2>/dev/null || true' EXIT
for protocol in $PROTOCOLS; do
  for n in $STREAMS; do
    DB=efms_bench_xds
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    PORT=$(free_port); GRPC=$(free_port)
    DATABASE_URL="$PG/$DB" EFMS_HTTP_ADDR="127.0.0.1:$PORT" EFMS_GRPC_ADDR="127.0.0.1:$GRPC" \
      EFMS_LOG=warn "$EFMS" serve > /tmp/efms-bench-xds.log 2>&1 &
    SERVER=$!
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
    SYSTEM=$("$EFMS" token --role system --subject bench --ttl 2h)
    curl -fs -X POST "http://127.0.0.1:$PORT/api/v1/tenants" -H "authorization: Bearer $SYSTEM" \
      -H 'content-type: application/json' -d '{"slug": "acme", "name": "Acme"}' >/dev/null
    echo "== $protocol, $n streams, ${EFMS_BENCH_FILL:-0} more clusters, ${EFMS_BENCH_ATTACH:-0} attached ($EFMS)"
    EFMS_LOAD_TOKEN=$("$EFMS" token --role operator --tenant acme --subject bench --ttl 2h) \
      "$BIN/efms-xds-load" --http "http://127.0.0.1:$PORT" --grpc "127.0.0.1:$GRPC" --streams "$n" \
      --protocol "$protocol" --changes "$CHANGES" --nack-every 100 --server-pid "$SERVER" \
      --fill "${EFMS_BENCH_FILL:-0}" --attach "${EFMS_BENCH_ATTACH:-0}"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    SERVER=
  done
done
