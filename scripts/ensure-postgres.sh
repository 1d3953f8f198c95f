#!/usr/bin/env bash
# Makes sure the local PostgreSQL answers on 127.0.0.1:5432 (starting the Debian cluster when it is
# down) and that psql is there.
set -euo pipefail
if ! command -v psql >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq postgresql postgresql-client >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
