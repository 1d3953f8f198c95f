#!/usr/bin/env bash
# Restores a backup of scripts/backup.sh into an empty database (created beforehand, e.g.
# `createdb`), in one transaction. With --deletions CSV (the FILE.deletions.csv of the newest
# backup, or an export of tenant_deletions), every tenant purged after the backup was taken is
# purged again from what was restored, through the same database function as the purge, and its
# slug stays reserved. Then run `efms verify` against the database.
# Usage: scripts/restore.sh FILE DATABASE_URL [--deletions CSV]
set -euo pipefail
[ $# -eq 2 ] || [ $# -eq 4 ] || { echo "usage: $0 FILE DATABASE_URL [--deletions CSV]" >&2; exit 2; }
FILE=$1
URL=$2
DELETIONS=
if [ $# -eq 4 ]; then
  [ "$3" = --deletions ] || { echo "usage: $0 FILE DATABASE_URL [--deletions CSV]" >&2; exit 2; }
  DELETIONS=$4
  [ -r "$DELETIONS" ] || { echo "restore: cannot read $DELETIONS" >&2; exit 2; }
fi
[ -r "$FILE" ] || { echo "restore: cannot read $FILE" >&2; exit 2; }
TABLES=$(psql -X -qAt --no-password "$URL" -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
if [ "$TABLES" != 0 ]; then
  echo "restore: the database holds $TABLES tables; restore into an empty database" >&2
  exit 1
fi
# The log is read in commit order by transaction id (docs/adr/0002): a cluster whose transaction
# ids are behind the backup's would give new commits ids older than restored ones.
if [ -r "$FILE.txid" ]; then
  BEHIND=$(psql -X -qAt --no-password "$URL" -c "SELECT '$(cat "$FILE.txid")'::xid8 >= pg_current_xact_id()")
  if [ "$BEHIND" = t ]; then
    echo "restore: this cluster's transaction ids are behind the backup's log ($(cat "$FILE.txid"));" >&2
    echo "advance them first (docs/operations.md, 'Restoring into another cluster')" >&2
    exit 1
  fi
fi
pg_restore --exit-on-error --single-transaction --no-password --dbname="$URL" "$FILE"
if [ -n "$DELETIONS" ]; then
  psql -X -q -v ON_ERROR_STOP=1 --no-password "$URL" <<SQL
BEGIN;
CREATE TEMPORARY TABLE purged_since (LIKE tenant_deletions) ON COMMIT DROP;
\\copy purged_since (tenant_id, slug, deleted_at, deleted_by, purged_at, purged_rows) FROM '$DELETIONS' WITH (FORMAT csv, HEADER)
-- A tenant the backup still holds goes as it went then: deleted, due, purged.
UPDATE tenants t SET deleted_at = p.deleted_at, deleted_by = p.deleted_by, purge_after = now()
FROM purged_since p WHERE t.tenant_id = p.tenant_id;
SELECT t.slug, efms_purge_tenant(t.tenant_id) AS purged_again
FROM tenants t JOIN purged_since p ON p.tenant_id = t.tenant_id;
-- Each record as it was first written.
DELETE FROM tenant_deletions d USING purged_since p WHERE d.tenant_id = p.tenant_id;
INSERT INTO tenant_deletions SELECT * FROM purged_since;
COMMIT;
SQL
fi
echo "restored $FILE; now run: DATABASE_URL=... efms verify"
