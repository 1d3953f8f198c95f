#!/usr/bin/env bash
# API latency benchmark (NFR-PF-001, NFR-PF-004): GET one resource and a 100-item list at 64 and
# 1,000 concurrent connections (wrk), writes per second, and pgbench's primary-key SELECT of the same
# row on the same server in the same run as the baseline. Prints a Markdown table.
# Settings: EFMS_BENCH_SECONDS (default 10) per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
ulimit -n 65536 2>/dev/null || true
SECONDS_PER=${EFMS_BENCH_SECONDS:-10}
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms
BIN="${CARGO_TARGET_DIR:-target}/release/efms"
DB=efms_bench_api
PG="postgres://postgres@127.0.0.1:5432"
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GRPC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
DATABASE_URL="$PG/$DB" EFMS_HTTP_ADDR="127.0.0.1:$PORT" EFMS_GRPC_ADDR="127.0.0.1:$GRPC" \
  EFMS_DB_MAX_CONNECTIONS=32 EFMS_LOG=warn "$BIN" serve > /tmp/efms-bench-api.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
EFMS_BENCH_TOKEN=$("$BIN" token --role system --subject bench --ttl 2h)
export EFMS_BENCH_TOKEN
BASE="http://127.0.0.1:$PORT/api/v1/tenants/acme"
curl -fs -X POST "http://127.0.0.1:$PORT/api/v1/tenants" -H "authorization: Bearer $EFMS_BENCH_TOKEN" \
  -H 'content-type: application/json' -d '{"slug": "acme", "name": "Acme"}' >/dev/null
for n in $(seq -w 1 150); do
  name="cluster-$n"
  curl -fs -X POST "$BASE/clusters" -H "authorization: Bearer $EFMS_BENCH_TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"$name\",\"type\":\"STATIC\",\"connect_timeout\":\"1s\",\"load_assignment\":{\"cluster_name\":\"$name\",\"endpoints\":[{\"lb_endpoints\":[{\"endpoint\":{\"address\":{\"socket_address\":{\"address\":\"127.0.0.1\",\"port_value\":8080}}}}]}]}}" >/dev/null
done

# One wrk run: prints "p50 p99 req/s non2xx".
measure() { # connections url [script]
  local out
  out=$(wrk -t"$(( $1 < 2 ? 1 : 2 ))" -c"$1" -d"${SECONDS_PER}s" --latency -s "${3:-scripts/bench/get.lua}" "$2")
  local p50 p99 rps errors
  p50=$(awk '$1=="50%"{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/{print $5}' <<<"$out")
  echo "$p50 $p99 $rps ${errors:-0}"
}

# pgbench: the same row by primary key, 64 clients; p50/p99 from the per-transaction log.
TENANT_ID=$(psql -tA "$PG/$DB" -c "SELECT tenant_id FROM tenants WHERE slug = 'acme'")
PGB=$(mktemp -d)
cat > "$PGB/select.sql" <<SQL
SELECT document FROM config_resources WHERE tenant_id = '$TENANT_ID' AND branch = 'main' AND kind = 'cluster' AND name = 'cluster-007';
SQL
(cd "$PGB" && pgbench -n -M prepared -c 64 -j 2 -T "$SECONDS_PER" -f select.sql -l "$PG/$DB" >/dev/null 2>&1)
read -r pg_p50 pg_p99 pg_tps < <(cat "$PGB"/pgbench_log.* | python3 -c '
import sys
lat = sorted(int(line.split()[2]) for line in sys.stdin)
n = len(lat)
print(f"{lat[n//2]/1000:.2f}ms {lat[int(n*0.99)]/1000:.2f}ms {n/'"$SECONDS_PER"':.0f}")')
rm -rf "$PGB"

echo "| measurement | connections | p50 | p99 | requests/s | non-2xx |"
echo "|---|---|---|---|---|---|"
echo "| pgbench primary-key SELECT (baseline) | 64 | $pg_p50 | $pg_p99 | $pg_tps | 0 |"
for c in 64 1000; do
  read -r p50 p99 rps errors < <(measure "$c" "$BASE/clusters/cluster-007")
  echo "| GET one cluster | $c | $p50 | $p99 | $rps | $errors |"
  read -r p50 p99 rps errors < <(measure "$c" "$BASE/clusters?limit=100")
  echo "| GET 100-cluster list | $c | $p50 | $p99 | $rps | $errors |"
done
for c in 1 16; do
  read -r p50 p99 rps errors < <(measure "$c" "$BASE/clusters" scripts/bench/post_cluster.lua)
  echo "| POST a new cluster (one commit each) | $c | $p50 | $p99 | $rps | $errors |"
done
