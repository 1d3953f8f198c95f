#!/usr/bin/env bash
# Starts the control plane against the local Postgres: HTTP on 127.0.0.1:8080, gRPC on
# 127.0.0.1:18000, database `efms` (created and migrated on start). A token secret and a master
# key for secret material are generated once into .efms/jwt-secret and .efms/master-key unless
# EFMS_JWT_SECRET and EFMS_MASTER_KEY are set. Keep .efms/master-key: stored secrets need it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
mkdir -p .efms
if [ -z "${EFMS_JWT_SECRET:-}" ]; then
  [ -s .efms/jwt-secret ] || head -c 48 /dev/urandom | base64 | tr -d '\n' > .efms/jwt-secret
  EFMS_JWT_SECRET=$(cat .efms/jwt-secret)
  export EFMS_JWT_SECRET
fi
if [ -z "${EFMS_MASTER_KEY:-}" ]; then
  [ -s .efms/master-key ] || (umask 077; head -c 32 /dev/urandom | base64 | tr -d '\n' > .efms/master-key)
  EFMS_MASTER_KEY=$(cat .efms/master-key)
  export EFMS_MASTER_KEY
fi
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms
echo "efms: a system token: EFMS_JWT_SECRET=\$(cat .efms/jwt-secret) ${CARGO_TARGET_DIR:-target}/release/efms token --role system" >&2
exec "${CARGO_TARGET_DIR:-target}/release/efms" serve "$@"
