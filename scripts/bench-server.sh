# Sourced by the benchmarks: starts the release efms of "$BIN" on a fresh database "$1" with
# generated secrets, on free ports, and waits until it answers. Sets PG, DB, PORT, GRPC and SERVER
# (its pid; stopped when the calling script exits).
PG="postgres://postgres@127.0.0.1:5432"
DB=$1
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); GRPC=$(free_port)
EFMS_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export EFMS_JWT_SECRET
EFMS_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
export EFMS_MASTER_KEY
DATABASE_URL="$PG/$1" EFMS_HTTP_ADDR="127.0.0.1:$PORT" EFMS_GRPC_ADDR="127.0.0.1:$GRPC" \
  EFMS_DB_MAX_CONNECTIONS=32 EFMS_LOG=warn "$BIN/efms" serve > "/tmp/$1.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
