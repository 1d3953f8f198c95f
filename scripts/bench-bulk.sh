#!/usr/bin/env bash
# Bulk benchmark (API-BK-002): one POST /bulk of N cluster creations (default 10,000) against a
# release efms on its own database, beside the same creations as single POSTs (a sample of
# EFMS_BENCH_SINGLE, default 300) in the same run. Prints the time of each and the ratio per
# operation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
N=${EFMS_BENCH_BULK:-10000}
SINGLE=${EFMS_BENCH_SINGLE:-300}
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms
BIN="${CARGO_TARGET_DIR:-target}/release/efms"
PG="postgres://postgres@127.0.0.1:5432"
DB=efms_bench_bulk
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GRPC=$(free_port)
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
DATABASE_URL="$PG/$DB" EFMS_HTTP_ADDR="127.0.0.1:$PORT" EFMS_GRPC_ADDR="127.0.0.1:$GRPC" EFMS_LOG=warn \
  "$BIN" serve > /tmp/efms-bench-bulk.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
TOKEN=$("$BIN" token --role system --subject bench --ttl 2h)
BASE="http://127.0.0.1:$PORT/api/v1/tenants"
curl -fs -X POST "$BASE" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"slug": "acme", "name": "Acme"}' >/dev/null
python3 - "$N" > /tmp/efms-bench-bulk.json <<'PY'
import json, sys
n = int(sys.argv[1])
def cluster(name):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]}}
print(json.dumps({"message": "bench", "operations": [
    {"op": "create", "kind": "clusters", "resource": cluster(f"bulk-{i:05d}")} for i in range(n)]}))
PY
# More than 1,000 operations run as a job: the time is from the POST to the job's end.
BULK=$(python3 - "$BASE/acme/bulk" "$TOKEN" "http://127.0.0.1:$PORT" <<'PY'
import json, sys, time, urllib.request
url, token, origin = sys.argv[1:4]
headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
body = open("/tmp/efms-bench-bulk.json", "rb").read()
start = time.monotonic()
response = urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers))
result = json.load(response)
if response.status == 202:
    location = origin + response.headers["location"]
    while not result.get("finished_at"):
        time.sleep(0.02)
        result = json.load(urllib.request.urlopen(urllib.request.Request(location, headers=headers)))
elapsed = time.monotonic() - start
json.dump(result, open("/tmp/efms-bench-bulk.out", "w"))
print(f"{elapsed:.3f}")
PY
)
START=$(date +%s.%N)
for i in $(seq 1 "$SINGLE"); do
  name="single-$i"
  curl -fs -o /dev/null -X POST "$BASE/acme/clusters" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"$name\",\"type\":\"STATIC\",\"connect_timeout\":\"1s\",\"load_assignment\":{\"cluster_name\":\"$name\",\"endpoints\":[{\"lb_endpoints\":[{\"endpoint\":{\"address\":{\"socket_address\":{\"address\":\"127.0.0.1\",\"port_value\":8080}}}}]}]}}"
done
END=$(date +%s.%N)
python3 - "$N" "$BULK" "$SINGLE" "$START" "$END" "$(cat /tmp/efms-bench-bulk.out)" <<'PY'
import json, sys
n, bulk, single, start, end, out = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
per_single = (end - start) / single
print(f"| bulk of {n:,} creations (one revision {out['revision']}) | {bulk:.2f} s | {bulk / n * 1000:.3f} ms per operation |")
print(f"| {single} single POSTs (baseline, same run) | {end - start:.2f} s | {per_single * 1000:.2f} ms per operation |")
print(f"| ratio per operation | | {per_single / (bulk / n):.1f}x faster in bulk |")
PY
