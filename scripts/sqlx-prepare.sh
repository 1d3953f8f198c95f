#!/usr/bin/env bash
# Refreshes the committed offline query data (.sqlx/) that lets the workspace build with
# SQLX_OFFLINE=true: applies the migrations to a scratch database, then recompiles every crate that
# uses sqlx's query macros with SQLX_OFFLINE_DIR set, which makes the macros write their data there.
set -euo pipefail
cd "$(dirname "$0")/.."
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DB=efms_sqlx_prepare
psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
for migration in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 "$PGURL/$DB" -f "$migration" >/dev/null
done
rm -rf .sqlx && mkdir .sqlx
touch commands/src/lib.rs projections/src/lib.rs api/src/lib.rs notify/src/lib.rs xds/src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="$PGURL/$DB" \
  cargo check --workspace --all-targets --quiet
psql -q "$PGURL/postgres" -c "DROP DATABASE $DB"
echo "offline query data: $(ls .sqlx | wc -l) queries in .sqlx/"
