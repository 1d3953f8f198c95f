//! The `resource_grants` table: what a tenant shares with which other tenant (FR-MT-005).

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::TenantSlug;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A grant to record.
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    /// The owner.
    pub owner: (Uuid, &'a str),
    /// The tenant that gets read access.
    pub grantee: &'a TenantSlug,
    /// `cluster` or `template`.
    pub kind: &'a str,
    /// The owner's name of the resource.
    pub name: &'a str,
    /// Who grants.
    pub granted_by: &'a str,
}

/// Records a grant; `None` when it exists already.
pub async fn create(
    pool: &PgPool,
    grant: NewGrant<'_>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (owner_id, owner_slug) = grant.owner;
    let mut tx = Scope::Tenant(owner_id).begin(pool).await?;
    let inserted = sqlx::query!(
        r#"INSERT INTO resource_grants (tenant_id, owner_slug, kind, name, grantee_id, grantee_slug,
                                        granted_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING granted_at"#,
        owner_id,
        owner_slug,
        grant.kind,
        grant.name,
        grant.grantee.tenant_id(),
        grant.grantee.as_str(),
        grant.granted_by,
    )
    .fetch_one(&mut *tx)
    .await;
    match inserted {
        Ok(row) => {
            tx.commit().await?;
            Ok(Some(row.granted_at))
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => Ok(None),
        Err(error) => Err(error),
    }
}

/// Which grants of a tenant: those it made, or those made to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The grants the tenant made.
    Given,
    /// The grants made to the tenant.
    Received,
}

/// A grant with the current document of the shared resource.
#[derive(Debug, Clone)]
pub struct GrantRow {
    /// The owner's slug.
    pub owner_slug: String,
    /// `cluster` or `template`.
    pub kind: String,
    /// The owner's name of the resource.
    pub name: String,
    /// The grantee's slug.
    pub grantee_slug: String,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// Who granted it.
    pub granted_by: String,
    /// The owner's current document, if the owner has the resource.
    pub document: Option<Value>,
    /// The owner's revision at which it last changed.
    pub version: Option<i64>,
}

/// The grants a tenant made or received, with the current documents of the shared resources.
/// Row-level security shows a grantee the grants it received and the granted documents of the
/// owner's `main`, nothing else of the owner's.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    side: Side,
) -> Result<Vec<GrantRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT g.owner_slug, g.kind, g.name, g.grantee_slug, g.granted_at, g.granted_by,
                  r.document AS "document?", r.version AS "version?"
           FROM resource_grants g
           LEFT JOIN config_resources r
             ON r.tenant_id = g.tenant_id AND r.branch = 'main' AND r.kind = g.kind
                AND r.name = g.name
           WHERE (g.tenant_id = $1 AND $2) OR (g.grantee_id = $1 AND NOT $2)
           ORDER BY g.owner_slug, g.kind, g.name, g.grantee_slug"#,
        tenant_id,
        side == Side::Given,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| GrantRow {
            owner_slug: row.owner_slug,
            kind: row.kind,
            name: row.name,
            grantee_slug: row.grantee_slug,
            granted_at: row.granted_at,
            granted_by: row.granted_by,
            document: row.document,
            version: row.version,
        })
        .collect())
}

/// A grantee's resource that refers to a shared one.
#[derive(Debug, Clone)]
pub struct Dependent {
    /// Its branch.
    pub branch: String,
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// What a revocation came to.
#[derive(Debug, Clone)]
pub enum Revocation {
    /// There is no such grant.
    Missing,
    /// The grantee refers to the resource (here, at most 100 of its resources); nothing changed.
    InUse(Vec<Dependent>),
    /// Revoked.
    Revoked,
}

/// Revokes the grant of `kind` `name` of the owner to `grantee`, unless the grantee refers to it
/// as `reference` (`kind:owner/name`).
pub async fn revoke(
    pool: &PgPool,
    owner_id: Uuid,
    (grantee, kind, name): (&TenantSlug, &str, &str),
    reference: &str,
) -> Result<Revocation, sqlx::Error> {
    // First wait for the grantee's commits in flight: each holds this lock (shared) from reading
    // what is shared with it until its commit is projected; those that start later wait until
    // this revocation is decided. Taken before the transaction writes anything, it holds back no
    // transaction id meanwhile, so the projector keeps reading the log.
    let mut tx = Scope::Tenant(owner_id).begin(pool).await?;
    sqlx::query_scalar!(
        r#"SELECT pg_advisory_xact_lock($1)::text AS "locked""#,
        efms_commands::configuration::sharing::grantee_lock(grantee.tenant_id()),
    )
    .fetch_one(&mut *tx)
    .await?;
    // Deleted first and kept only if nothing refers to the resource: the row stays locked
    // meanwhile, so two revocations do not race.
    let found = sqlx::query_scalar!(
        r#"DELETE FROM resource_grants
           WHERE tenant_id = $1 AND grantee_id = $2 AND kind = $3 AND name = $4
           RETURNING 1 AS "found!""#,
        owner_id,
        grantee.tenant_id(),
        kind,
        name,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Ok(Revocation::Missing);
    }
    let dependents = dependents(pool, grantee, reference).await?;
    if !dependents.is_empty() {
        tx.rollback().await?;
        return Ok(Revocation::InUse(dependents));
    }
    tx.commit().await?;
    Ok(Revocation::Revoked)
}

/// The grantee's resources, on any branch, that refer to `reference` (`kind:owner/name`). This is
/// the one read across tenants: it runs as the system role and returns only where the reference
/// is made, never a document.
async fn dependents(
    pool: &PgPool,
    grantee: &TenantSlug,
    reference: &str,
) -> Result<Vec<Dependent>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query_as!(
        Dependent,
        r#"SELECT branch, kind, name FROM config_resources
           WHERE tenant_id = $1 AND shared_refs ? $2 ORDER BY branch, kind, name LIMIT 100"#,
        grantee.tenant_id(),
        reference,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// A resource of another tenant that refers to what a tenant shares.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Referrer {
    /// The tenant that refers to it.
    pub tenant: String,
    /// Where the reference is made: its branch, kind and name.
    pub branch: String,
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What it refers to (`kind:owner/name`).
    pub reference: String,
}

/// The resources of other tenants, on any branch, that refer to something `owner_id` shares with
/// them (at most 100). Like a revocation's check, it runs as the system role and returns only
/// where each reference is made.
pub async fn referrers_of(pool: &PgPool, owner_id: Uuid) -> Result<Vec<Referrer>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query_as::<_, Referrer>(
        "SELECT g.grantee_slug AS tenant, c.branch, c.kind, c.name, r.reference
         FROM resource_grants g
         CROSS JOIN LATERAL (SELECT g.kind || ':' || g.owner_slug || '/' || g.name AS reference) r
         JOIN config_resources c ON c.tenant_id = g.grantee_id AND c.shared_refs ? r.reference
         WHERE g.tenant_id = $1
         ORDER BY g.grantee_slug, c.branch, c.kind, c.name
         LIMIT 100",
    )
    .bind(owner_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Waits for the commits in flight of every tenant `owner_id` shares with, and holds back their
/// next ones until the returned transaction ends (see [`revoke`]): what they refer to stays as
/// read meanwhile.
pub async fn hold_grantees(
    pool: &PgPool,
    owner_id: Uuid,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let grantees: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT grantee_id FROM resource_grants WHERE tenant_id = $1 ORDER BY grantee_id",
    )
    .bind(owner_id)
    .fetch_all(&mut *tx)
    .await?;
    for grantee in grantees {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(efms_commands::configuration::sharing::grantee_lock(grantee))
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}
