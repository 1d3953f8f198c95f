#!/usr/bin/env bash
# Backs up an efms database: FILE, a pg_dump archive (custom format) of the whole database, log,
# read models, sealed secrets and migrations' history included, taken in one snapshot; and
# FILE.deletions.csv, the records of the tenants purged so far, to hand to restore.sh with any
# older backup so that it does not bring a purged tenant back; and FILE.txid, the newest
# transaction id in the log. The master key is not in either
# (docs/operations.md: keep it in escrow apart from the backups).
# Usage: scripts/backup.sh DATABASE_URL FILE
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DATABASE_URL FILE" >&2; exit 2; }
URL=$1
FILE=$2
pg_dump --format=custom --no-password --file="$FILE.partial" "$URL"
psql -X -q -v ON_ERROR_STOP=1 --no-password "$URL" \
  -c "\\copy (SELECT tenant_id, slug, deleted_at, deleted_by, purged_at, purged_rows FROM tenant_deletions ORDER BY slug) TO '$FILE.deletions.csv' WITH (FORMAT csv, HEADER)"
# How far the log's transaction ids went: a cluster restored into must be past it (restore.sh).
psql -X -qAt --no-password "$URL" -c "SELECT coalesce(max(tx_id)::text, '0') FROM events" > "$FILE.txid"
mv "$FILE.partial" "$FILE"
echo "backed up to $FILE ($(du -h "$FILE" | cut -f1)); purged tenants' records in $FILE.deletions.csv"
