#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and the end-to-end tests against the local Postgres
# (started when it is down) and real Envoy proxies (pinned builds installed into .tools/envoy by
# scripts/install-envoy.sh). Each test gets a database of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
scripts/install-envoy.sh >/dev/null
export SQLX_OFFLINE=true
export DATABASE_URL=${EFMS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --no-fail-fast "$@"
