#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and the end-to-end tests against the local Postgres
# (started when it is down), real Envoy proxies (pinned builds installed into .tools/envoy by
# scripts/install-envoy.sh) and real Docker engines (Debian's, installed by
# scripts/install-docker.sh, run by scripts/dockerd.sh with the image scripts/envoy-image.sh
# builds), a streaming replica of the local Postgres (scripts/pg-replica.sh; engines and replica
# stopped at the end) and a real Prometheus (scripts/install-prometheus.sh). Each test gets a
# database of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh >/dev/null
scripts/install-envoy.sh >/dev/null
scripts/install-docker.sh
scripts/envoy-image.sh >/dev/null
scripts/install-prometheus.sh
trap 'scripts/dockerd.sh stop-all; scripts/pg-replica.sh stop' EXIT
export SQLX_OFFLINE=true
export DATABASE_URL=${EFMS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The replica tests run `efms serve` as processes of their own (to kill one outright).
cargo build --quiet --bin efms
export EFMS_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/efms"
# The large-tenant tests commit tens of thousands of resources in single transactions, which hold
# back every other test's commit-ordered reading on the same server (ADR 0002): they run on their
# own, after the rest, and one at a time: one's bulk would stall the other's reads.
cargo nextest run --workspace --no-fail-fast -E 'not binary(large_tenant)' "$@"
cargo nextest run --workspace --no-fail-fast -E 'binary(large_tenant)' --test-threads 1 "$@"
