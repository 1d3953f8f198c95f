#!/usr/bin/env bash
# Starts the control plane against the local Postgres: HTTP on 127.0.0.1:8080, gRPC on
# 127.0.0.1:18000, database `efms` (created and migrated on start). A token secret and a master
# key for secret material are generated once into .efms/jwt-secret and .efms/master-key (both
# readable by their owner only) unless EFMS_JWT_SECRET and EFMS_MASTER_KEY are set. Keep
# .efms/master-key: stored secrets need it.
#
# Unless DATABASE_URL is set, efms connects as a login role of its own, `efms`: not a superuser,
# the owner of the database `efms` and of what the migrations create there, and a member of the
# roles `efms_app` and `efms_system` it works through, with SET on the parameter app.tenant_id
# (PostgreSQL 15 or later). It holds CREATEROLE only while the migrations run (the first one
# creates those roles); the superuser `postgres` sets this up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
scripts/generate-secrets.sh .efms
if [ -z "${EFMS_JWT_SECRET:-}" ]; then
  EFMS_JWT_SECRET=$(cat .efms/jwt-secret)
  export EFMS_JWT_SECRET
fi
if [ -z "${EFMS_MASTER_KEY:-}" ]; then
  EFMS_MASTER_KEY=$(cat .efms/master-key)
  export EFMS_MASTER_KEY
fi
export SQLX_OFFLINE=true
cargo build --release --quiet --bin efms
efms="${CARGO_TARGET_DIR:-target}/release/efms"

if [ -z "${DATABASE_URL:-}" ]; then
  superuser=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt)
  owner=$("${superuser[@]}" -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'efms'")
  if [ -n "$owner" ] && [ "$owner" != efms ]; then
    echo "run.sh: the database efms belongs to $owner (made by an earlier run.sh as the superuser)." >&2
    echo "  Drop it to start afresh as the role efms: dropdb -h 127.0.0.1 -U postgres efms" >&2
    echo "  or keep it as the superuser: DATABASE_URL=postgres://$owner@127.0.0.1:5432/efms $0" >&2
    exit 1
  fi
  "${superuser[@]}" <<'SQL'
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'efms') THEN
        CREATE ROLE efms LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'efms_app') THEN
        CREATE ROLE efms_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'efms_system') THEN
        CREATE ROLE efms_system NOLOGIN;
    END IF;
END
$$;
GRANT efms_app, efms_system TO efms;
-- A migration creates a function that sets this (tenant) parameter, which needs the privilege.
GRANT SET ON PARAMETER app.tenant_id TO efms;
SELECT 'CREATE DATABASE efms OWNER efms'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'efms') \gexec
SQL
  export DATABASE_URL=postgres://efms@127.0.0.1:5432/efms
  # The migrations may create roles; efms may do so only while they run.
  "${superuser[@]}" -c "ALTER ROLE efms CREATEROLE"
  trap '"${superuser[@]}" -c "ALTER ROLE efms NOCREATEROLE"' EXIT
  "$efms" migrate
  "${superuser[@]}" -c "ALTER ROLE efms NOCREATEROLE"
  trap - EXIT
fi
echo "efms: a system token: EFMS_JWT_SECRET=\$(cat .efms/jwt-secret) $efms token --role system" >&2
exec "$efms" serve "$@"
