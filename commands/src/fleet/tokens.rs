//! Join tokens (`vm_join_tokens`): their digests, who issued and revoked them, and finding the VM
//! a presented token speaks for.

use std::collections::HashMap;

use efms_domain::fleet::join_token::digest_of;
use efms_domain::fleet::JoinToken;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Scope;

/// The VM a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its tenant's slug.
    pub tenant: String,
    /// The VM's name.
    pub vm: String,
    /// The token's id.
    pub token_id: Uuid,
}

/// Revokes the VM's live token, if any, and stores `token` as its only live one.
pub async fn replace(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    token_id: Uuid,
    token: &JoinToken,
    actor: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    sqlx::query!(
        r#"UPDATE vm_join_tokens SET revoked_at = now(), revoked_by = $3
           WHERE tenant_id = $1 AND vm_name = $2 AND revoked_at IS NULL"#,
        tenant_id,
        vm,
        actor,
    )
    .execute(&mut *tx)
    .await?;
    let digest = token.digest();
    sqlx::query!(
        r#"INSERT INTO vm_join_tokens (tenant_id, vm_name, token_id, digest, issued_by)
           VALUES ($1, $2, $3, $4, $5)"#,
        tenant_id,
        vm,
        token_id,
        digest.as_slice(),
        actor,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Revokes the VM's live token, if any.
pub async fn revoke(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    actor: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    sqlx::query!(
        r#"UPDATE vm_join_tokens SET revoked_at = now(), revoked_by = $3
           WHERE tenant_id = $1 AND vm_name = $2 AND revoked_at IS NULL"#,
        tenant_id,
        vm,
        actor,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The VM a presented token speaks for, if it is a live token of a VM.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Joined>, sqlx::Error> {
    let digest = digest_of(token);
    let mut tx = Scope::System.begin(pool).await?;
    let joined = sqlx::query_as!(
        Joined,
        r#"SELECT t.tenant_id, n.slug AS tenant, t.vm_name AS vm, t.token_id
           FROM vm_join_tokens t JOIN tenants n ON n.tenant_id = t.tenant_id
           WHERE t.digest = $1 AND t.revoked_at IS NULL AND n.deleted_at IS NULL"#,
        digest.as_slice(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(joined)
}

/// The images the VM of a live token `token_id` watches; `None` when the token is revoked (or
/// its VM removed). A stream asks this when it opens.
pub async fn watched_while_live(
    pool: &PgPool,
    tenant_id: Uuid,
    token_id: Uuid,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    let mut watched = watched_while_live_all(pool, &[(tenant_id, token_id)]).await?;
    Ok(watched.remove(&token_id).flatten())
}

/// [`watched_while_live`] for many tokens (`(tenant, token)`) in one statement: per token, the
/// images its VM watches, `None` when it is revoked or unknown or its tenant is deleted. The open
/// streams of a process are re-checked this way, together.
pub async fn watched_while_live_all(
    pool: &PgPool,
    tokens: &[(Uuid, Uuid)],
) -> Result<HashMap<Uuid, Option<Vec<String>>>, sqlx::Error> {
    let (tenants, ids): (Vec<Uuid>, Vec<Uuid>) = tokens.iter().copied().unzip();
    let mut tx = Scope::System.begin(pool).await?;
    // Each token is found by its key and its revocation checked here: asked in the query, a
    // planner without statistics scans all of a tenant's live tokens by their partial index.
    let rows = sqlx::query!(
        r#"SELECT u.token_id AS "token_id!",
                  t.revoked_at IS NULL AND efms_tenant_is_live(u.tenant_id) AS "live!",
                  coalesce(v.watch_images, '[]'::jsonb) AS "images!"
           FROM UNNEST($1::uuid[], $2::uuid[]) AS u(tenant_id, token_id),
                LATERAL (SELECT tenant_id, vm_name, revoked_at FROM vm_join_tokens
                         WHERE tenant_id = u.tenant_id AND token_id = u.token_id LIMIT 1) AS t
           LEFT JOIN LATERAL (SELECT watch_images FROM vms
                              WHERE tenant_id = t.tenant_id AND name = t.vm_name LIMIT 1) AS v
                ON true"#,
        &tenants,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut watched: HashMap<Uuid, Option<Vec<String>>> =
        ids.iter().map(|id| (*id, None)).collect();
    for row in rows.into_iter().filter(|row| row.live) {
        let images = serde_json::from_value(row.images)
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        watched.insert(row.token_id, Some(images));
    }
    Ok(watched)
}
