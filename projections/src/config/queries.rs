//! The queries over the configuration read models that the API serves, including time travel
//! (FR-VC-001..004): a resource, a page of resources, histories, revisions and branches, as they
//! are now or as of a revision.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::envoy::ResourceKind;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A resource as stored, at some revision.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    /// Its kind.
    pub kind: ResourceKind,
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
            r#"SELECT kind AS "kind: ResourceKind", name, document, version, updated_at, updated_by
               FROM config_resources
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
            r#"SELECT kind AS "kind: ResourceKind", name, document AS "document!",
                      valid_from AS version, recorded_at AS updated_at, actor AS updated_by
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
    // One statement per source and direction, each ordered by the name alone: a page is then read
    // in the primary key's order and stops after `limit` rows. An order chosen by a parameter, or
    // a union of both sources, made the planner sort every version of the kind instead.
    let rows = match (as_of, query.descending) {
        (AsOf::Now, false) => sqlx::query_as!(
            ListedResource,
            r#"SELECT name AS "name!", document::text AS "document!", version AS "version!",
                      updated_at AS "updated_at!", updated_by AS "updated_by!"
               FROM config_resources
               WHERE tenant_id = $1 AND branch = $2 AND kind = $3
                 AND ($4::text IS NULL OR name LIKE $4)
                 AND ($5::text IS NULL OR name > $5)
                 AND ($7::text[] IS NULL OR name = ANY($7))
               ORDER BY name ASC
               LIMIT $6"#,
            tenant_id,
            branch,
            kind,
            prefix,
            query.after,
            query.limit,
            query.names.as_deref(),
        )
        .fetch_all(&mut *tx)
        .await?,
        (AsOf::Now, true) => sqlx::query_as!(
            ListedResource,
            r#"SELECT name AS "name!", document::text AS "document!", version AS "version!",
                      updated_at AS "updated_at!", updated_by AS "updated_by!"
               FROM config_resources
               WHERE tenant_id = $1 AND branch = $2 AND kind = $3
                 AND ($4::text IS NULL OR name LIKE $4)
                 AND ($5::text IS NULL OR name < $5)
                 AND ($7::text[] IS NULL OR name = ANY($7))
               ORDER BY name DESC
               LIMIT $6"#,
            tenant_id,
            branch,
            kind,
            prefix,
            query.after,
            query.limit,
            query.names.as_deref(),
        )
        .fetch_all(&mut *tx)
        .await?,
        (AsOf::Revision(revision), false) => sqlx::query_as!(
            ListedResource,
            r#"SELECT name AS "name!", document::text AS "document!", valid_from AS "version!",
                      recorded_at AS "updated_at!", actor AS "updated_by!"
               FROM config_resource_versions
               WHERE tenant_id = $1 AND branch = $2 AND kind = $3
                 AND valid_from <= $8 AND (valid_to IS NULL OR valid_to > $8) AND document IS NOT NULL
                 AND ($4::text IS NULL OR name LIKE $4)
                 AND ($5::text IS NULL OR name > $5)
                 AND ($7::text[] IS NULL OR name = ANY($7))
               ORDER BY name ASC
               LIMIT $6"#,
            tenant_id,
            branch,
            kind,
            prefix,
            query.after,
            query.limit,
            query.names.as_deref(),
            revision,
        )
        .fetch_all(&mut *tx)
        .await?,
        (AsOf::Revision(revision), true) => sqlx::query_as!(
            ListedResource,
            r#"SELECT name AS "name!", document::text AS "document!", valid_from AS "version!",
                      recorded_at AS "updated_at!", actor AS "updated_by!"
               FROM config_resource_versions
               WHERE tenant_id = $1 AND branch = $2 AND kind = $3
                 AND valid_from <= $8 AND (valid_to IS NULL OR valid_to > $8) AND document IS NOT NULL
                 AND ($4::text IS NULL OR name LIKE $4)
                 AND ($5::text IS NULL OR name < $5)
                 AND ($7::text[] IS NULL OR name = ANY($7))
               ORDER BY name DESC
               LIMIT $6"#,
            tenant_id,
            branch,
            kind,
            prefix,
            query.after,
            query.limit,
            query.names.as_deref(),
            revision,
        )
        .fetch_all(&mut *tx)
        .await?,
    };
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
) -> Result<Vec<(ResourceKind, String, Value)>, sqlx::Error> {
    Ok(resources_at(pool, tenant_id, branch, revision)
        .await?
        .into_iter()
        .map(|row| (row.kind, row.name, row.document))
        .collect())
}

/// Every live resource of a branch as of `revision`, with its version, in kind and name order.
pub async fn resources_at(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    revision: i64,
) -> Result<Vec<ResourceRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        ResourceRow,
        r#"SELECT kind AS "kind: ResourceKind", name, document AS "document!",
                  valid_from AS version, recorded_at AS updated_at, actor AS updated_by
           FROM config_resource_versions
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
    Ok(rows)
}

/// A branch of a tenant's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchRow {
    /// Its name.
    pub name: String,
    /// The branch it started from.
    pub base_branch: String,
    /// The base's revision it started from.
    pub base_revision: i64,
    /// Its first revision.
    pub fork_revision: i64,
    /// Its latest revision.
    pub head: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When it was deleted, if it was.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One branch (deleted ones included), if it was ever created.
pub async fn get_branch(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
) -> Result<Option<BranchRow>, sqlx::Error> {
    Ok(list_branches(pool, tenant_id, Some(name), true)
        .await?
        .into_iter()
        .next())
}

/// The branches of a tenant in name order (only `name` when given; deleted ones when asked).
pub async fn list_branches(
    pool: &PgPool,
    tenant_id: Uuid,
    name: Option<&str>,
    include_deleted: bool,
) -> Result<Vec<BranchRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        BranchRow,
        r#"SELECT b.name, b.base_branch, b.base_revision, b.fork_revision,
                  (SELECT coalesce(max(r.revision), 0) FROM config_revisions r
                   WHERE r.tenant_id = b.tenant_id AND r.branch = b.name) AS "head!",
                  b.created_at, b.created_by, b.deleted_at
           FROM config_branches b
           WHERE b.tenant_id = $1 AND ($2::text IS NULL OR b.name = $2)
             AND ($3 OR b.deleted_at IS NULL)
           ORDER BY b.name"#,
        tenant_id,
        name,
        include_deleted,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The latest revision of `from` that a merge brought into `into`, if any.
pub async fn last_merged_revision(
    pool: &PgPool,
    tenant_id: Uuid,
    into: &str,
    from: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let revision = sqlx::query_scalar!(
        r#"SELECT max(merged_revision) FROM config_revisions
           WHERE tenant_id = $1 AND branch = $2 AND merged_branch = $3"#,
        tenant_id,
        into,
        from,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(revision)
}

/// The groups on `main` whose proxies follow `branch`.
pub async fn groups_pinned_to(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let names = sqlx::query_scalar!(
        r#"SELECT name FROM config_resources
           WHERE tenant_id = $1 AND branch = 'main' AND kind = 'group' AND document->>'branch' = $2
           ORDER BY name"#,
        tenant_id,
        branch,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(names)
}

/// The template declarations of a branch's resources as of `revision`, by kind and name.
pub async fn derivations_at(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    revision: i64,
) -> Result<BTreeMap<(ResourceKind, String), Value>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT kind AS "kind: ResourceKind", name, derivation AS "derivation!"
           FROM config_resource_versions
           WHERE tenant_id = $1 AND branch = $2 AND valid_from <= $3
             AND (valid_to IS NULL OR valid_to > $3) AND document IS NOT NULL
             AND derivation IS NOT NULL"#,
        tenant_id,
        branch,
        revision,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.kind, row.name), row.derivation))
        .collect())
}

/// The template declaration of one resource as it is now, if it is declared from a template.
pub async fn derivation_of(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    kind: ResourceKind,
    name: &str,
) -> Result<Option<Value>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let derivation = sqlx::query_scalar!(
        r#"SELECT derivation FROM config_resources
           WHERE tenant_id = $1 AND branch = $2 AND kind = $3 AND name = $4"#,
        tenant_id,
        branch,
        kind.to_string(),
        name,
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    tx.commit().await?;
    Ok(derivation)
}
