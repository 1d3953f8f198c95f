//! The projector side: applies the `config` streams' events to the read-model tables, one commit
//! at a time.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate as _;
use efms_commands::RecordedEvent;
use efms_domain::config::{shared, BranchPoint, ConfigEvent, ConfigRepo};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projector::{payload_of, Projection, ProjectionError};

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

/// Keeps the configuration read models.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigProjection;

impl Projection for ConfigProjection {
    const NAME: &'static str = "config";
    const AGGREGATE_TYPE: &'static str = ConfigRepo::TYPE;

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_all(tx, std::slice::from_ref(event)).await
    }

    /// Writes each commit of the batch with a handful of statements, whatever its size: a
    /// commit changes each resource at most once, so its changes are independent rows.
    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut commit = CommitRows::default();
        for event in events {
            let Some(payload) = payload_of::<ConfigEvent>(event, ConfigRepo::TYPE)? else {
                continue;
            };
            let key = (
                event.tenant_id,
                event.aggregate_id.clone(),
                revision_of(&payload),
            );
            if commit.key.as_ref() != Some(&key) {
                std::mem::take(&mut commit).write(tx).await?;
                commit.key = Some(key);
            }
            commit.push(event, payload);
        }
        commit.write(tx).await
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query!("DELETE FROM config_branches")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM config_resource_versions")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM config_resources")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM config_revisions")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn reset_tenant(
        &self,
        tx: &mut PgConnection,
        tenant_id: uuid::Uuid,
    ) -> Result<(), ProjectionError> {
        sqlx::query!(
            "DELETE FROM config_branches WHERE tenant_id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM config_resource_versions WHERE tenant_id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM config_resources WHERE tenant_id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM config_revisions WHERE tenant_id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// The revision an event belongs to.
fn revision_of(event: &ConfigEvent) -> u64 {
    match event {
        ConfigEvent::Committed { revision, .. }
        | ConfigEvent::Branched { revision, .. }
        | ConfigEvent::BranchDeleted { revision }
        | ConfigEvent::ResourceCreated { revision, .. }
        | ConfigEvent::ResourceReplaced { revision, .. }
        | ConfigEvent::ResourceDeleted { revision, .. } => *revision,
    }
}

/// The rows of one commit, written together.
#[derive(Default)]
struct CommitRows {
    /// Tenant, branch and revision.
    key: Option<(Uuid, String, u64)>,
    /// When, who, message and operation, from the commit's header event.
    header: Option<(DateTime<Utc>, String, Option<String>, String)>,
    /// For a merge commit: what it merged.
    merged: Option<BranchPoint>,
    /// The branch started here from this base, at this time, by this actor.
    branched: Option<(BranchPoint, DateTime<Utc>, String)>,
    /// The branch was deleted at this time.
    deleted_at: Option<DateTime<Utc>>,
    kinds: Vec<String>,
    names: Vec<String>,
    changes: Vec<String>,
    documents: Vec<Option<Value>>,
    hashes: Vec<Option<String>>,
    derivations: Vec<Option<Value>>,
    /// What each changed resource refers to in other tenants, as `kind:owner/name`.
    shared_refs: Vec<Option<Value>>,
    recorded_at: Vec<DateTime<Utc>>,
    actors: Vec<String>,
}

impl CommitRows {
    fn push(&mut self, event: &RecordedEvent, payload: ConfigEvent) {
        let (kind, name, change, document, hash, derivation, refs) = match payload {
            ConfigEvent::Committed {
                message,
                operation,
                merged,
                ..
            } => {
                self.header = Some((
                    event.recorded_at,
                    event.actor.clone(),
                    message,
                    operation.to_string(),
                ));
                self.merged = merged;
                return;
            }
            ConfigEvent::Branched { base, .. } => {
                self.branched = Some((base, event.recorded_at, event.actor.clone()));
                return;
            }
            ConfigEvent::BranchDeleted { .. } => {
                self.deleted_at = Some(event.recorded_at);
                return;
            }
            ConfigEvent::ResourceCreated {
                kind,
                name,
                document,
                hash,
                derivation,
                refs,
                ..
            } => (
                kind,
                name,
                "created",
                Some(document),
                Some(hash),
                derivation,
                refs,
            ),
            ConfigEvent::ResourceReplaced {
                kind,
                name,
                document,
                hash,
                derivation,
                refs,
                ..
            } => (
                kind,
                name,
                "replaced",
                Some(document),
                Some(hash),
                derivation,
                refs,
            ),
            ConfigEvent::ResourceDeleted { kind, name, .. } => {
                (kind, name, "deleted", None, None, None, BTreeSet::new())
            }
        };
        let shared: Vec<Value> = refs
            .iter()
            .filter(|r| shared::split_qualified(&r.name).is_some())
            .map(|r| Value::String(format!("{}:{}", r.kind, r.name)))
            .collect();
        self.shared_refs
            .push((!shared.is_empty()).then_some(Value::Array(shared)));
        self.kinds.push(kind.to_string());
        self.names.push(name);
        self.changes.push(change.to_owned());
        self.documents.push(document);
        self.hashes.push(hash);
        self.derivations
            .push(derivation.map(|d| serde_json::to_value(d).expect("a declaration serialises")));
        self.recorded_at.push(event.recorded_at);
        self.actors.push(event.actor.clone());
    }

    /// The commit's row in `config_revisions`, with its number of changes.
    async fn write_header(
        &self,
        tx: &mut PgConnection,
        (tenant_id, branch, revision): (Uuid, &str, i64),
        changes: i32,
    ) -> Result<(), ProjectionError> {
        if let Some((recorded_at, actor, message, operation)) = &self.header {
            sqlx::query!(
                r#"INSERT INTO config_revisions (tenant_id, branch, revision, recorded_at, actor, message,
                                                 operation, changes, merged_branch, merged_revision)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"#,
                tenant_id,
                branch,
                revision,
                recorded_at,
                actor,
                message.as_deref(),
                operation,
                changes,
                self.merged.as_ref().map(|m| m.branch.as_str()),
                self.merged.as_ref().map(|m| to_i64(m.revision)),
            )
            .execute(&mut *tx)
            .await?;
        } else if changes > 0 {
            sqlx::query!(
                "UPDATE config_revisions SET changes = changes + $4 WHERE tenant_id = $1 AND branch = $2 AND revision = $3",
                tenant_id,
                branch,
                revision,
                changes,
            )
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// The branch's row in `config_branches`: created with its first commit; on deletion marked
    /// deleted, and its current state removed (its history stays).
    async fn write_branch(
        &self,
        tx: &mut PgConnection,
        tenant_id: Uuid,
        branch: &str,
        revision: i64,
    ) -> Result<(), ProjectionError> {
        if let Some((base, at, actor)) = &self.branched {
            sqlx::query!(
                r#"INSERT INTO config_branches (tenant_id, name, base_branch, base_revision,
                                                fork_revision, created_at, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
                tenant_id,
                branch,
                base.branch,
                to_i64(base.revision),
                revision,
                at,
                actor,
            )
            .execute(&mut *tx)
            .await?;
        }
        if let Some(at) = self.deleted_at {
            sqlx::query!(
                "UPDATE config_branches SET deleted_at = $3 WHERE tenant_id = $1 AND name = $2",
                tenant_id,
                branch,
                at,
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "DELETE FROM config_resources WHERE tenant_id = $1 AND branch = $2",
                tenant_id,
                branch,
            )
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    async fn write(self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        let Some((tenant_id, branch, revision)) = self.key.clone() else {
            return Ok(());
        };
        let revision = to_i64(revision);
        let changes = i32::try_from(self.kinds.len()).unwrap_or(i32::MAX);
        self.write_header(tx, (tenant_id, &branch, revision), changes)
            .await?;
        if changes > 0 {
            self.write_changes(tx, tenant_id, &branch, revision).await?;
        }
        // After the changes: a deletion that shares their batch removes them too.
        self.write_branch(tx, tenant_id, &branch, revision).await
    }

    /// The changed resources: current state and temporal table.
    async fn write_changes(
        &self,
        tx: &mut PgConnection,
        tenant_id: Uuid,
        branch: &str,
        revision: i64,
    ) -> Result<(), ProjectionError> {
        // The current state: puts upserted, deletions removed.
        sqlx::query!(
            r#"INSERT INTO config_resources (tenant_id, branch, kind, name, document, hash, version,
                                             created_at, updated_at, updated_by, derivation,
                                             shared_refs)
               SELECT $1, $2, u.kind, u.name, u.document, u.hash, $3, u.at, u.at, u.actor, u.derivation,
                      u.shared_refs
               FROM UNNEST($4::text[], $5::text[], $6::jsonb[], $7::text[], $8::timestamptz[], $9::text[],
                           $10::jsonb[], $11::jsonb[])
                    AS u(kind, name, document, hash, at, actor, derivation, shared_refs)
               WHERE u.document IS NOT NULL
               ON CONFLICT (tenant_id, branch, kind, name) DO UPDATE
               SET document = EXCLUDED.document, hash = EXCLUDED.hash, version = EXCLUDED.version,
                   updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by,
                   derivation = EXCLUDED.derivation, shared_refs = EXCLUDED.shared_refs"#,
            tenant_id,
            branch,
            revision,
            &self.kinds,
            &self.names,
            &self.documents as &[Option<Value>],
            &self.hashes as &[Option<String>],
            &self.recorded_at,
            &self.actors,
            &self.derivations as &[Option<Value>],
            &self.shared_refs as &[Option<Value>],
        )
        .execute(&mut *tx)
        .await?;
        let (deleted_kinds, deleted_names): (Vec<&str>, Vec<&str>) = self
            .changes
            .iter()
            .zip(self.kinds.iter().zip(&self.names))
            .filter(|(change, _)| *change == "deleted")
            .map(|(_, (kind, name))| (kind.as_str(), name.as_str()))
            .unzip();
        if !deleted_kinds.is_empty() {
            sqlx::query(DELETE_CURRENT)
                .bind(tenant_id)
                .bind(branch)
                .bind(&deleted_kinds as &[&str])
                .bind(&deleted_names as &[&str])
                .execute(&mut *tx)
                .await?;
        }
        // The temporal table: close each resource's open version, then open the new ones.
        sqlx::query(CLOSE_OPEN_VERSIONS)
            .bind(tenant_id)
            .bind(branch)
            .bind(revision)
            .bind(&self.kinds)
            .bind(&self.names)
            .execute(&mut *tx)
            .await?;
        sqlx::query!(
            r#"INSERT INTO config_resource_versions (tenant_id, branch, kind, name, valid_from, change,
                                                     document, hash, recorded_at, actor, derivation)
               SELECT $1, $2, u.kind, u.name, $3, u.change, u.document, u.hash, u.at, u.actor,
                      u.derivation
               FROM UNNEST($4::text[], $5::text[], $6::text[], $7::jsonb[], $8::text[],
                           $9::timestamptz[], $10::text[], $11::jsonb[])
                    AS u(kind, name, change, document, hash, at, actor, derivation)"#,
            tenant_id,
            branch,
            revision,
            &self.kinds,
            &self.names,
            &self.changes,
            &self.documents as &[Option<Value>],
            &self.hashes as &[Option<String>],
            &self.recorded_at,
            &self.actors,
            &self.derivations as &[Option<Value>],
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

fn to_i64(revision: u64) -> i64 {
    i64::try_from(revision).expect("revisions fit in i64")
}
