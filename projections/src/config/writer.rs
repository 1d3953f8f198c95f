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

use super::held::HeldChanges;
use super::tables::{write_commit_changes, ChangeRow, Commit};
use crate::projector::{payload_of, Projection, ProjectionError};

/// Keeps the configuration read models.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigProjection;

impl Projection for ConfigProjection {
    const NAME: &'static str = "config";
    const AGGREGATE_TYPE: &'static str = ConfigRepo::TYPE;
    const TABLES: &'static [&'static str] = &[
        "config_branches",
        "config_resource_versions",
        "config_resources",
        "config_revisions",
    ];

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
        write_commits(tx, events, None).await
    }

    type Replaying = HeldChanges;

    /// As [`Projection::apply_all`], with changes held back (see [`HeldChanges`]).
    async fn replay_all(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
        replaying: &mut HeldChanges,
    ) -> Result<(), ProjectionError> {
        write_commits(tx, events, Some(replaying)).await
    }

    async fn finish_replay(
        &self,
        tx: &mut PgConnection,
        replaying: HeldChanges,
    ) -> Result<(), ProjectionError> {
        replaying.finish(tx).await
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

/// Writes the commits of `events`, each with a handful of statements; a replay passes the
/// changes it holds back.
async fn write_commits(
    tx: &mut PgConnection,
    events: &[RecordedEvent],
    mut held: Option<&mut HeldChanges>,
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
            std::mem::take(&mut commit)
                .write(tx, held.as_deref_mut())
                .await?;
            commit.key = Some(key);
        }
        commit.push(event, payload);
    }
    commit.write(tx, held).await
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
    /// The changed resources.
    rows: Vec<ChangeRow>,
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
        let (tenant_id, branch, revision) = self.key.clone().expect("a commit's key comes first");
        self.rows.push(ChangeRow {
            tenant_id,
            branch,
            kind: kind.to_string(),
            name,
            revision: to_i64(revision),
            change: change.to_owned(),
            document,
            hash,
            recorded_at: event.recorded_at,
            actor: event.actor.clone(),
            derivation: derivation
                .map(|d| serde_json::to_value(d).expect("a declaration serialises")),
            shared_refs: (!shared.is_empty()).then_some(Value::Array(shared)),
        });
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

    async fn write(
        self,
        tx: &mut PgConnection,
        mut held: Option<&mut HeldChanges>,
    ) -> Result<(), ProjectionError> {
        let Some((tenant_id, branch, revision)) = self.key.clone() else {
            return Ok(());
        };
        let revision = to_i64(revision);
        let changes = i32::try_from(self.rows.len()).unwrap_or(i32::MAX);
        self.write_header(tx, (tenant_id, &branch, revision), changes)
            .await?;
        let commit = (tenant_id, branch.as_str(), revision);
        let CommitRows {
            rows,
            branched,
            deleted_at,
            ..
        } = self;
        if !rows.is_empty() {
            match held.as_deref_mut() {
                Some(held) => held.take(tx, commit, rows).await?,
                None => write_commit_changes(tx, commit, &rows).await?,
            }
        }
        // After the changes: a deletion that shares their batch removes them too.
        write_branch(tx, commit, branched.as_ref(), deleted_at).await?;
        if let (Some(held), Some(_)) = (held, deleted_at) {
            held.branch_deleted(tenant_id, &branch);
        }
        Ok(())
    }
}

/// The branch's row in `config_branches`: created with its first commit; on deletion marked
/// deleted, and its current state removed (its history stays).
async fn write_branch(
    tx: &mut PgConnection,
    (tenant_id, branch, revision): Commit<'_>,
    branched: Option<&(BranchPoint, DateTime<Utc>, String)>,
    deleted_at: Option<DateTime<Utc>>,
) -> Result<(), ProjectionError> {
    if let Some((base, at, actor)) = branched {
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
    if let Some(at) = deleted_at {
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

fn to_i64(revision: u64) -> i64 {
    i64::try_from(revision).expect("revisions fit in i64")
}
