//! The `proxy_tokens` table: every proxy token a bootstrap minted, for listing and revocation.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use sqlx::PgPool;
use uuid::Uuid;

/// A stored proxy token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProxyTokenRow {
    /// Its id (its `jti`).
    pub token_id: Uuid,
    /// The group it streams.
    pub group_name: String,
    /// The node it was minted for.
    pub node_id: Option<String>,
    /// Who minted it.
    pub issued_by: String,
    /// When.
    pub issued_at: DateTime<Utc>,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// A page of proxy tokens.
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    /// Only tokens older than this one (the previous page's cursor).
    pub before: Option<Uuid>,
    /// Only the tokens of this group.
    pub group: Option<&'a str>,
    /// How many rows to fetch.
    pub limit: i64,
}

/// A tenant's proxy tokens, newest first.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    query: PageQuery<'_>,
) -> Result<Vec<ProxyTokenRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as(
        "SELECT token_id, group_name, node_id, issued_by, issued_at, expires_at, revoked_at,
                revoked_by
         FROM proxy_tokens
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR token_id < $2)
           AND ($3::text IS NULL OR group_name = $3)
         ORDER BY token_id DESC LIMIT $4",
    )
    .bind(tenant_id)
    .bind(query.before)
    .bind(query.group)
    .bind(query.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Revokes a token (a revoked one keeps its first revocation); false when the tenant has no such
/// token.
pub async fn revoke(
    pool: &PgPool,
    tenant_id: Uuid,
    token_id: Uuid,
    revoked_by: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let found: Option<(bool,)> = sqlx::query_as(
        "UPDATE proxy_tokens
         SET revoked_at = coalesce(revoked_at, now()), revoked_by = coalesce(revoked_by, $3)
         WHERE tenant_id = $1 AND token_id = $2
         RETURNING true",
    )
    .bind(tenant_id)
    .bind(token_id)
    .bind(revoked_by)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(found.is_some())
}

/// Revokes every live token minted for proxy `node_id` (its container was removed); answers
/// how many.
pub async fn revoke_node(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
    revoked_by: &str,
) -> Result<u64, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let revoked = sqlx::query(
        "UPDATE proxy_tokens SET revoked_at = now(), revoked_by = $3
         WHERE tenant_id = $1 AND node_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant_id)
    .bind(node_id)
    .bind(revoked_by)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(revoked)
}

/// A token being minted.
#[derive(Debug, Clone)]
pub struct NewProxyToken<'a> {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its id.
    pub token_id: Uuid,
    /// The group it streams.
    pub group: &'a str,
    /// The node it is minted for.
    pub node_id: &'a str,
    /// Who mints it.
    pub issued_by: &'a str,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// Stores a minted token.
pub async fn insert(pool: &PgPool, token: NewProxyToken<'_>) -> Result<(), sqlx::Error> {
    let mut tx = Scope::Tenant(token.tenant_id).begin(pool).await?;
    sqlx::query(
        "INSERT INTO proxy_tokens (tenant_id, token_id, group_name, node_id, issued_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.tenant_id)
    .bind(token.token_id)
    .bind(token.group)
    .bind(token.node_id)
    .bind(token.issued_by)
    .bind(token.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
