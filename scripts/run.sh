#!/usr/bin/env bash
# Starts the control plane against the local Postgres: HTTP on 127.0.0.1:8080, gRPC on
# 127.0.0.1:18000, database `efms` (created and migrated on start). A token secret is generated once
# into .efms/jwt-secret unless EFMS_JWT_SECRET is set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
mkdir -p .efms
if [ -z "${EFMS_JWT_SECRET:-}" ]; then
  [ -s .efms/jwt-secret ] || head -c 48 /dev/urandom | base64 | tr -d '\n' > .efms/jwt-secret
  EFMS_JWT_SECRET=$(cat .efms/jwt-secret)
  export EFMS_JWT_SECRET
fi
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms
echo "efms: a system token: EFMS_JWT_SECRET=\$(cat .efms/jwt-secret) ${CARGO_TARGET_DIR:-target}/release/efms token --role system" >&2
exec "${CARGO_TARGET_DIR:-target}/release/efms" serve "$@"
