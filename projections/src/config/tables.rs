//! The statements that write a commit's changes into `config_resources` (the current state) and
//! `config_resource_versions` (the temporal table), shared by the projector, which writes each
//! commit at once, and by a replay, which holds rows back ([`super::held`]).
//!
//! Every statement takes one array per column and looks rows up one key at a time, so what it
//! costs depends on what it writes, not on what the tables hold.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projector::ProjectionError;

/// Closes the open version of each changed resource (`$4` kinds and `$5` names, pairwise) of
/// tenant `$1`'s branch `$2` at revision `$3`.
///
/// Each key is looked up on its own through the index of open versions (the `LATERAL` subquery
/// with its `LIMIT` cannot be flattened into a join, so the keys drive the lookups), and the row
/// found is updated by its physical address: the plan costs what the commit changes, whatever the
/// table holds and whatever its statistics say. A plain join of the keys with the table let the
/// planner pick a hash join over every version of the tenant, or worse. Held as text, not checked
/// at compile time, so that the test of its plan (`tests/write_plans.rs`) runs this very statement.
pub const CLOSE_OPEN_VERSIONS: &str = r"UPDATE config_resource_versions v SET valid_to = $3
FROM UNNEST($4::text[], $5::text[]) AS u(kind, name)
CROSS JOIN LATERAL (
    SELECT o.ctid AS row_id FROM config_resource_versions o
    WHERE o.tenant_id = $1 AND o.branch = $2 AND o.kind = u.kind AND o.name = u.name
      AND o.valid_to IS NULL
    LIMIT 1
) AS o
WHERE v.ctid = o.row_id";

/// Removes the deleted resources (`$3` kinds and `$4` names, pairwise) from the current state of
/// tenant `$1`'s branch `$2`, each looked up by its primary key on its own, the same way as
/// [`CLOSE_OPEN_VERSIONS`].
pub const DELETE_CURRENT: &str = r"DELETE FROM config_resources r
USING UNNEST($3::text[], $4::text[]) AS u(kind, name)
CROSS JOIN LATERAL (
    SELECT c.ctid AS row_id FROM config_resources c
    WHERE c.tenant_id = $1 AND c.branch = $2 AND c.kind = u.kind AND c.name = u.name
    LIMIT 1
) AS c
WHERE r.ctid = c.row_id";

/// Writes versions.
const INSERT_VERSIONS: &str = r"INSERT INTO config_resource_versions
    (tenant_id, branch, kind, name, valid_from, valid_to, change, document, hash, recorded_at,
     actor, derivation)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                     $7::text[], $8::jsonb[], $9::text[], $10::timestamptz[], $11::text[],
                     $12::jsonb[])";

/// Puts resources into the current state: a new row, or the new document of a row that keeps
/// its `created_at`. The keys of one statement must be distinct.
const UPSERT_CURRENT: &str = r"INSERT INTO config_resources
    (tenant_id, branch, kind, name, document, hash, version, created_at, updated_at, updated_by,
     derivation, shared_refs)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                     $7::bigint[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::jsonb[],
                     $12::jsonb[])
ON CONFLICT (tenant_id, branch, kind, name) DO UPDATE
SET document = EXCLUDED.document, hash = EXCLUDED.hash, version = EXCLUDED.version,
    updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by,
    derivation = EXCLUDED.derivation, shared_refs = EXCLUDED.shared_refs";

/// A commit: tenant, branch and revision.
pub(crate) type Commit<'a> = (Uuid, &'a str, i64);

/// One changed resource of a commit: its version, and (unless deleted) its current row.
#[derive(Debug, Clone)]
pub(crate) struct ChangeRow {
    pub tenant_id: Uuid,
    pub branch: String,
    pub kind: String,
    pub name: String,
    /// The commit's revision.
    pub revision: i64,
    /// `created`, `replaced` or `deleted`.
    pub change: String,
    /// `None` for a deletion.
    pub document: Option<Value>,
    pub hash: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub derivation: Option<Value>,
    /// What it refers to in other tenants, as `kind:owner/name`.
    pub shared_refs: Option<Value>,
}

/// A resource: tenant, branch, kind and name.
pub(crate) type ResourceKey = (Uuid, String, String, String);

impl ChangeRow {
    /// The resource it changes.
    pub fn key(&self) -> ResourceKey {
        (
            self.tenant_id,
            self.branch.clone(),
            self.kind.clone(),
            self.name.clone(),
        )
    }
}

/// Closes the open versions of one commit's resources (kinds and names, pairwise).
pub(crate) async fn close_open_versions(
    tx: &mut PgConnection,
    (tenant_id, branch, revision): Commit<'_>,
    kinds: &[&str],
    names: &[&str],
) -> Result<(), ProjectionError> {
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(CLOSE_OPEN_VERSIONS)
        .bind(tenant_id)
        .bind(branch)
        .bind(revision)
        .bind(kinds)
        .bind(names)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Removes deleted resources (kinds and names, pairwise) of one branch from the current state.
pub(crate) async fn delete_current(
    tx: &mut PgConnection,
    (tenant_id, branch, _): Commit<'_>,
    kinds: &[&str],
    names: &[&str],
) -> Result<(), ProjectionError> {
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(DELETE_CURRENT)
        .bind(tenant_id)
        .bind(branch)
        .bind(kinds)
        .bind(names)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The columns every statement takes: tenant, branch, kind and name.
fn key_columns<'r>(
    rows: &[&'r ChangeRow],
) -> (Vec<Uuid>, Vec<&'r str>, Vec<&'r str>, Vec<&'r str>) {
    (
        rows.iter().map(|r| r.tenant_id).collect(),
        rows.iter().map(|r| r.branch.as_str()).collect(),
        rows.iter().map(|r| r.kind.as_str()).collect(),
        rows.iter().map(|r| r.name.as_str()).collect(),
    )
}

/// Inserts versions, each with its `valid_to` (`None`: open), in one statement.
pub(crate) async fn insert_versions(
    tx: &mut PgConnection,
    rows: &[&ChangeRow],
    valid_to: &[Option<i64>],
) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (tenants, branches, kinds, names) = key_columns(rows);
    sqlx::query(INSERT_VERSIONS)
        .bind(tenants)
        .bind(branches)
        .bind(kinds)
        .bind(names)
        .bind(rows.iter().map(|r| r.revision).collect::<Vec<_>>())
        .bind(valid_to)
        .bind(rows.iter().map(|r| r.change.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.document.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.hash.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.actor.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.derivation.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Puts resources (none deleted, keys distinct) into the current state, each with the
/// `created_at` it gets if it is new, in one statement.
pub(crate) async fn upsert_current(
    tx: &mut PgConnection,
    rows: &[&ChangeRow],
    created_at: &[DateTime<Utc>],
) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (tenants, branches, kinds, names) = key_columns(rows);
    sqlx::query(UPSERT_CURRENT)
        .bind(tenants)
        .bind(branches)
        .bind(kinds)
        .bind(names)
        .bind(
            rows.iter()
                .map(|r| r.document.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.hash.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.revision).collect::<Vec<_>>())
        .bind(created_at)
        .bind(rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.actor.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.derivation.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.shared_refs.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Writes one commit's changes as the projector does: puts and deletions in the current state,
/// then the open versions of the same resources closed and the new ones inserted, open.
pub(crate) async fn write_commit_changes(
    tx: &mut PgConnection,
    commit: Commit<'_>,
    rows: &[ChangeRow],
) -> Result<(), ProjectionError> {
    let all: Vec<&ChangeRow> = rows.iter().collect();
    let (puts, deletions): (Vec<&ChangeRow>, Vec<&ChangeRow>) =
        all.iter().copied().partition(|r| r.document.is_some());
    let created_at: Vec<DateTime<Utc>> = puts.iter().map(|r| r.recorded_at).collect();
    upsert_current(tx, &puts, &created_at).await?;
    let (_, _, kinds, names) = key_columns(&deletions);
    delete_current(tx, commit, &kinds, &names).await?;
    let (_, _, kinds, names) = key_columns(&all);
    close_open_versions(tx, commit, &kinds, &names).await?;
    insert_versions(tx, &all, &vec![None; all.len()]).await
}
