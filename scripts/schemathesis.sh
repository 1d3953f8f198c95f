#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from /openapi.json against a running
# efms (its own database, a tenant `acme`, a system token) and fails on any 5xx or any response that
# breaks its documented schema. EFMS_SCHEMATHESIS_EXAMPLES per operation (default 80: over 1,000
# requests for the API's operations).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
VENV=.tools/venv
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet schemathesis==4.32.5
fi
export SQLX_OFFLINE=true
cargo build --quiet --bin efms
BIN="${CARGO_TARGET_DIR:-target}/debug/efms"
DB=efms_schemathesis
psql -q "postgres://postgres@127.0.0.1:5432/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GRPC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" EFMS_HTTP_ADDR="127.0.0.1:$PORT" \
  EFMS_GRPC_ADDR="127.0.0.1:$GRPC" EFMS_LOG=warn "$BIN" serve > .tools/schemathesis-efms.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.2
done
TOKEN=$("$BIN" token --role system --subject schemathesis)
curl -fs -X POST "http://127.0.0.1:$PORT/api/v1/tenants" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"slug": "acme", "name": "Acme"}' >/dev/null
# Something to find: endpoints and an EDS cluster in `acme`.
for body in '{"cluster_name": "service_a", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8081}}}}]}]}' \
            '{"name": "service_a", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}'; do
  kind=$([ "${body#*cluster_name}" != "$body" ] && echo endpoints || echo clusters)
  curl -fs -X POST "http://127.0.0.1:$PORT/api/v1/tenants/acme/$kind" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "$body" >/dev/null
done
# A group, for its resources and bootstrap routes.
curl -fs -X POST "http://127.0.0.1:$PORT/api/v1/tenants/acme/groups" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d '{"name": "edge", "resources": [{"kind": "cluster", "name": "service_a"}]}' >/dev/null
"$VENV/bin/schemathesis" --config-file tests/schemathesis.toml run "http://127.0.0.1:$PORT/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "${EFMS_SCHEMATHESIS_EXAMPLES:-80}" \
  --phases examples,fuzzing,stateful \
  --workers 2 \
  --seed 1
