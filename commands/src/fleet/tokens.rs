//! Join tokens (`vm_join_tokens`): their digests, who issued and revoked them, and finding the VM
//! a presented token speaks for.

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
           WHERE t.digest = $1 AND t.revoked_at IS NULL"#,
        digest.as_slice(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(joined)
}

/// The images the VM of a live token `token_id` watches; `None` when the token is revoked (or
/// its VM removed). An open stream asks this at each re-check.
pub async fn watched_while_live(
    pool: &PgPool,
    tenant_id: Uuid,
    token_id: Uuid,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    // The token is found by its key and its revocation checked here: asked in the query, a
    // planner without statistics scans all of the tenant's live tokens by their partial index.
    let row = sqlx::query!(
        r#"SELECT t.revoked_at IS NULL AS "live!", coalesce(v.watch_images, '[]'::jsonb) AS "images!"
           FROM vm_join_tokens t
           LEFT JOIN vms v ON v.tenant_id = t.tenant_id AND v.name = t.vm_name
           WHERE t.tenant_id = $1 AND t.token_id = $2"#,
        tenant_id,
        token_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let images = row.filter(|row| row.live).map(|row| row.images);
    images
        .map(|images| {
            serde_json::from_value(images).map_err(|error| sqlx::Error::Decode(Box::new(error)))
        })
        .transpose()
}
