//! The configuration read models (`config_revisions`, `config_resources`,
//! `config_resource_versions`), kept from the `config` streams; and the queries over them,
//! including time travel (FR-VC-001..004).

use chrono::{DateTime, Utc};
use efms_commands::{RecordedEvent, Scope};
use efms_domain::config::{ConfigEvent, ConfigRepo};
use efms_domain::envoy::ResourceKind;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use cqrs_es::Aggregate as _;

use crate::projector::{payload_of, Projection, ProjectionError};

/// Keeps the configuration read models.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigProjection;

impl Projection for ConfigProjection {
    const NAME: &'static str = "config";

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let Some(payload) = payload_of::<ConfigEvent>(event, ConfigRepo::TYPE)? else {
            return Ok(());
        };
        let branch = event.aggregate_id.as_str();
        match payload {
            ConfigEvent::Committed {
                revision,
                message,
                operation,
            } => {
                sqlx::query!(
                    r#"INSERT INTO config_revisions (tenant_id, branch, revision, recorded_at, actor, message, operation)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
                    event.tenant_id,
                    branch,
                    to_i64(revision),
                    event.recorded_at,
                    event.actor,
                    message,
                    operation.to_string(),
                )
                .execute(&mut *tx)
                .await?;
            }
            ConfigEvent::ResourceCreated {
                revision,
                kind,
                name,
                document,
                hash,
                ..
            }
            | ConfigEvent::ResourceReplaced {
                revision,
                kind,
                name,
                document,
                hash,
                ..
            } => {
                let created = matches!(event.event_type.as_str(), "ResourceCreated");
                upsert_current(tx, event, branch, kind, &name, revision, &document, &hash).await?;
                let change = if created { "created" } else { "replaced" };
                add_version(
                    tx,
                    event,
                    branch,
                    kind,
                    &name,
                    revision,
                    change,
                    Some(document),
                    Some(hash),
                )
                .await?;
            }
            ConfigEvent::ResourceDeleted {
                revision,
                kind,
                name,
            } => {
                sqlx::query!(
                    "DELETE FROM config_resources WHERE tenant_id = $1 AND branch = $2 AND kind = $3 AND name = $4",
                    event.tenant_id,
                    branch,
                    kind.to_string(),
                    name,
                )
                .execute(&mut *tx)
                .await?;
                add_version(
                    tx, event, branch, kind, &name, revision, "deleted", None, None,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
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
}

/// Writes the current state of a created or replaced resource.
#[allow(clippy::too_many_arguments)]
async fn upsert_current(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    branch: &str,
    kind: ResourceKind,
    name: &str,
    revision: u64,
    document: &Value,
    hash: &str,
) -> Result<(), ProjectionError> {
    sqlx::query!(
        r#"INSERT INTO config_resources (tenant_id, branch, kind, name, document, hash, version,
                                         created_at, updated_at, updated_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)
           ON CONFLICT (tenant_id, branch, kind, name) DO UPDATE
           SET document = EXCLUDED.document, hash = EXCLUDED.hash, version = EXCLUDED.version,
               updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by"#,
        event.tenant_id,
        branch,
        kind.to_string(),
        name,
        document,
        hash,
        to_i64(revision),
        event.recorded_at,
        event.actor,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Closes the resource's open version and opens a new one at `revision`; counts the change.
#[allow(clippy::too_many_arguments)]
async fn add_version(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    branch: &str,
    kind: ResourceKind,
    name: &str,
    revision: u64,
    change: &str,
    document: Option<Value>,
    hash: Option<String>,
) -> Result<(), ProjectionError> {
    let kind = kind.to_string();
    let revision = to_i64(revision);
    sqlx::query!(
        r#"UPDATE config_resource_versions SET valid_to = $5
           WHERE tenant_id = $1 AND branch = $2 AND kind = $3 AND name = $4 AND valid_to IS NULL"#,
        event.tenant_id,
        branch,
        kind,
        name,
        revision,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO config_resource_versions (tenant_id, branch, kind, name, valid_from, change, document,
                                                 hash, recorded_at, actor)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"#,
        event.tenant_id,
        branch,
        kind,
        name,
        revision,
        change,
        document,
        hash,
        event.recorded_at,
        event.actor,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE config_revisions SET changes = changes + 1 WHERE tenant_id = $1 AND branch = $2 AND revision = $3",
        event.tenant_id,
        branch,
        revision,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn to_i64(revision: u64) -> i64 {
    i64::try_from(revision).expect("revisions fit in i64")
}

/// A resource as stored, at some revision.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    /// Its kind (`cluster`, ...).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its canonical document.
    pub document: Value,
    /// The revision at which this version was written (its ETag).
    pub version: i64,
    /// When this version was written.
    pub updated_at: DateTime<Utc>,
    /// Who wrote it.
    pub updated_by: String,
}

/// Which state a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The latest.
    Now,
    /// As it was right after this revision.
    Revision(i64),
}

/// Resolves `?at=` to the last revision committed at or before `at` (0: before the first).
pub async fn revision_at(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    at: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let revision = sqlx::query_scalar!(
        r#"SELECT coalesce(max(revision), 0) AS "revision!" FROM config_revisions
           WHERE tenant_id = $1 AND branch = $2 AND recorded_at <= $3"#,
        tenant_id,
        branch,
        at,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(revision)
}

/// The latest revision of a branch (0 before the first commit).
pub async fn head_revision(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
) -> Result<i64, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let revision = sqlx::query_scalar!(
        r#"SELECT coalesce(max(revision), 0) AS "revision!" FROM config_revisions WHERE tenant_id = $1 AND branch = $2"#,
        tenant_id,
        branch,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(revision)
}

/// One resource as of `as_of`.
pub async fn get_resource(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    kind: ResourceKind,
    name: &str,
    as_of: AsOf,
) -> Result<Option<ResourceRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let kind = kind.to_string();
    let row = match as_of {
        AsOf::Now => sqlx::query_as!(
            ResourceRow,
            r#"SELECT kind, name, document, version, updated_at, updated_by FROM config_resources
               WHERE tenant_id = $1 AND branch = $2 AND kind = $3 AND name = $4"#,
            tenant_id,
            branch,
            kind,
            name,
        )
        .fetch_optional(&mut *tx)
        .await?,
        AsOf::Revision(revision) => sqlx::query_as!(
            ResourceRow,
            r#"SELECT kind, name, document AS "document!", valid_from AS version,
                      recorded_at AS updated_at, actor AS updated_by
               FROM config_resource_versions
               WHERE tenant_id = $1 AND branch = $2 AND kind = $3 AND name = $4
                 AND valid_from <= $5 AND (valid_to IS NULL OR valid_to > $5) AND document IS NOT NULL"#,
            tenant_id,
            branch,
            kind,
            name,
            revision,
        )
        .fetch_optional(&mut *tx)
        .await?,
    };
    tx.commit().await?;
    Ok(row)
}

/// Filters and order of a resource list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only names starting with this.
    pub name_prefix: Option<String>,
    /// Only names after this one (the cursor), in the chosen order.
    pub after: Option<String>,
    /// Descending name order.
    pub descending: bool,
    /// Page size.
    pub limit: i64,
    /// Only these names (a group's attachments), when given.
    pub names: Option<Vec<String>>,
}

/// A resource in a list: its document as the JSON text Postgres returns, so a page of documents
/// is passed through without being parsed and serialised again.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedResource {
    /// Its name.
    pub name: String,
    /// Its canonical document, as JSON text.
    pub document: String,
    /// The revision of this version (its ETag).
    pub version: i64,
    /// When this version was written.
    pub updated_at: DateTime<Utc>,
    /// Who wrote it.
    pub updated_by: String,
}

/// A page of resources of one kind as of `as_of`, in name order.
pub async fn list_resources(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    kind: ResourceKind,
    as_of: AsOf,
    query: &ListQuery,
) -> Result<Vec<ListedResource>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let kind = kind.to_string();
    let prefix = query.name_prefix.as_deref().map(like_prefix);
    let revision = match as_of {
        AsOf::Now => None,
        AsOf::Revision(revision) => Some(revision),
    };
    let rows = sqlx::query_as!(
        ListedResource,
        r#"SELECT name AS "name!", document::text AS "document!", version AS "version!",
                  updated_at AS "updated_at!", updated_by AS "updated_by!"
           FROM (
               SELECT kind, name, document, version, updated_at, updated_by FROM config_resources
               WHERE $7::bigint IS NULL AND tenant_id = $1 AND branch = $2 AND kind = $3
               UNION ALL
               SELECT kind, name, document, valid_from, recorded_at, actor FROM config_resource_versions
               WHERE $7::bigint IS NOT NULL AND tenant_id = $1 AND branch = $2 AND kind = $3
                 AND valid_from <= $7 AND (valid_to IS NULL OR valid_to > $7) AND document IS NOT NULL
           ) AS r
           WHERE ($4::text IS NULL OR name LIKE $4)
             AND ($5::text IS NULL OR (NOT $6 AND name > $5) OR ($6 AND name < $5))
             AND ($9::text[] IS NULL OR name = ANY($9))
           ORDER BY CASE WHEN $6 THEN name END DESC, name ASC
           LIMIT $8"#,
        tenant_id,
        branch,
        kind,
        prefix,
        query.after,
        query.descending,
        revision,
        query.limit,
        query.names.as_deref(),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// `prefix%` with LIKE's wildcards escaped.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    pattern.push('%');
    pattern
}

/// One change in a resource's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The revision of the change.
    pub revision: i64,
    /// When.
    pub recorded_at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// The commit message.
    pub message: Option<String>,
    /// The commit's operation.
    pub operation: String,
    /// What happened to this resource: created, replaced or deleted.
    pub change: String,
}

/// The history of one resource, newest first.
pub async fn resource_history(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    kind: ResourceKind,
    name: &str,
) -> Result<Vec<HistoryRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        HistoryRow,
        r#"SELECT v.valid_from AS revision, v.recorded_at, v.actor, r.message, r.operation, v.change
           FROM config_resource_versions v
           JOIN config_revisions r ON r.tenant_id = v.tenant_id AND r.branch = v.branch AND r.revision = v.valid_from
           WHERE v.tenant_id = $1 AND v.branch = $2 AND v.kind = $3 AND v.name = $4
           ORDER BY v.valid_from DESC"#,
        tenant_id,
        branch,
        kind.to_string(),
        name,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// A commit as the revisions list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRow {
    /// Its number.
    pub revision: i64,
    /// When.
    pub recorded_at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// The message.
    pub message: Option<String>,
    /// What it did.
    pub operation: String,
    /// How many resources it changed.
    pub changes: i32,
}

/// Commits of a branch, newest first, before revision `before` (exclusive) if given.
pub async fn list_revisions(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RevisionRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        RevisionRow,
        r#"SELECT revision, recorded_at, actor, message, operation, changes FROM config_revisions
           WHERE tenant_id = $1 AND branch = $2 AND ($3::bigint IS NULL OR revision < $3)
           ORDER BY revision DESC LIMIT $4"#,
        tenant_id,
        branch,
        before,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Every live resource of a branch as of `revision`: (kind, name) → document.
pub async fn state_at(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    revision: i64,
) -> Result<Vec<(String, String, Value)>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT kind, name, document AS "document!" FROM config_resource_versions
           WHERE tenant_id = $1 AND branch = $2 AND valid_from <= $3
             AND (valid_to IS NULL OR valid_to > $3) AND document IS NOT NULL
           ORDER BY kind, name"#,
        tenant_id,
        branch,
        revision,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.kind, row.name, row.document))
        .collect())
}
