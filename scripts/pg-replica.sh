#!/usr/bin/env bash
# A streaming replica of the local Postgres (127.0.0.1:5432) for the read-replica tests: a base
# backup (`pg_basebackup -R`, so it follows the primary's WAL stream) in its own data directory,
# run by the primary's server binaries on its own port, as the `postgres` user. The primary is
# allowed replication connections from 127.0.0.1 (one pg_hba line, added when missing).
#
#   scripts/pg-replica.sh start   # starts it (or finds it running); prints its port
#   scripts/pg-replica.sh stop    # stops it and removes its data directory
#
# EFMS_PG_REPLICA_PORT (default 5433) and EFMS_PG_REPLICA_DIR (default /var/tmp/efms-pg-replica).
set -euo pipefail
PORT=${EFMS_PG_REPLICA_PORT:-5433}
DIR=${EFMS_PG_REPLICA_DIR:-/var/tmp/efms-pg-replica}
version=$(ls /etc/postgresql | sort -V | tail -n 1)
bin=/usr/lib/postgresql/$version/bin
as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi; }

start() {
  if pg_isready -q -h 127.0.0.1 -p "$PORT"; then
    echo "$PORT"
    return
  fi
  exec 9>/tmp/efms-pg-replica.lock
  flock 9
  hba=$(psql -h 127.0.0.1 -U postgres -Atc "SHOW hba_file")
  if ! grep -Eq '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    echo "host replication all 127.0.0.1/32 trust" >>"$hba"
    psql -h 127.0.0.1 -U postgres -qAtc "SELECT pg_reload_conf()" >/dev/null
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR"
  chown postgres:postgres "$DIR"
  chmod 700 "$DIR"
  as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p 5432 -U postgres -D "$DIR/data" -R -X stream -c fast
  # Debian keeps the primary's configuration outside its data directory, so the backup holds
  # none: the replica gets its own, with what a standby needs at least as high as the primary,
  # and the same trust of local connections as the tests' primary.
  {
    echo "port = $PORT"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$DIR'"
    echo "hot_standby = on"
    for setting in max_connections max_locks_per_transaction max_worker_processes \
      max_prepared_transactions max_wal_senders; do
      echo "$setting = $(psql -h 127.0.0.1 -U postgres -Atc "SHOW $setting")"
    done
  } >"$DIR/data/postgresql.conf"
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$DIR/data/pg_hba.conf"
  : >"$DIR/data/pg_ident.conf"
  chown postgres:postgres "$DIR/data/postgresql.conf" "$DIR/data/pg_hba.conf" "$DIR/data/pg_ident.conf"
  as_postgres "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -t 60 start >/dev/null
  pg_isready -q -h 127.0.0.1 -p "$PORT"
  echo "$PORT"
}

stop() {
  if [ -f "$DIR/data/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null || true
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
