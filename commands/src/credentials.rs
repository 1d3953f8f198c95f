//! Whether a token still speaks for someone (NFR-SE-001, NFR-SE-002): the one rule the HTTP API
//! and the xDS server both apply, on every request and to every open stream.
//!
//! A signature and an expiry say that the control plane issued a token and when it lapses; they
//! cannot say that what it was issued to is still there. Two kinds of token can be withdrawn
//! before they expire:
//!
//! - a user's or service account's token names the user and the generation of its role and
//!   password: deleting the user, or changing either, withdraws it;
//! - a proxy token of a bootstrap names its id in `proxy_tokens`: revoking it withdraws it.
//!
//! Tokens that name neither (those `efms token` prints, an identity provider's) end only when
//! they expire, or when their tenant is deleted: every token of a deleted tenant is withdrawn,
//! and a stream registers its tenant beside its token so that it ends with the tenant.

use std::collections::HashMap;

use sqlx::PgPool;
use uuid::Uuid;

use crate::Scope;

/// What a token was issued to that can be withdrawn before the token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revocable {
    /// A user or service account of a tenant, as of the generation of its role and password when
    /// the token was issued.
    User {
        /// The tenant.
        tenant_id: Uuid,
        /// The user.
        user_id: Uuid,
        /// Its generation then.
        generation: i32,
    },
    /// A proxy token minted by a bootstrap, by its id (`jti`).
    ProxyToken {
        /// The tenant.
        tenant_id: Uuid,
        /// The token's id.
        token_id: Uuid,
    },
    /// Any token of a tenant, which speaks for no one once the tenant is deleted.
    Tenant {
        /// The tenant.
        tenant_id: Uuid,
    },
}

impl Revocable {
    /// The tenant the token belongs to.
    pub fn tenant_id(&self) -> Uuid {
        match self {
            Self::User { tenant_id, .. }
            | Self::ProxyToken { tenant_id, .. }
            | Self::Tenant { tenant_id } => *tenant_id,
        }
    }
}

/// Why a token no longer speaks for anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Withdrawn {
    /// Its user or service account was deleted (or never existed).
    #[error("the token's user or service account was deleted")]
    UserDeleted,
    /// Its user's role or password changed after it was issued.
    #[error("the user's role or password changed after this token was issued; log in again")]
    UserChanged,
    /// The proxy token was revoked.
    #[error("proxy token {0} was revoked; fetch a new bootstrap")]
    ProxyTokenRevoked(Uuid),
    /// The proxy token is not one this control plane issued.
    #[error("proxy token {0} is not one this control plane issued")]
    ProxyTokenUnknown(Uuid),
    /// The token's tenant was deleted (or never existed).
    #[error("the token's tenant was deleted")]
    TenantDeleted,
}

/// Whether `credential` was withdrawn, read in `scope` (the tenant's own, or the system's).
pub async fn withdrawn(
    pool: &PgPool,
    scope: Scope,
    credential: Revocable,
) -> Result<Option<Withdrawn>, sqlx::Error> {
    Ok(withdrawals(pool, scope, &[credential])
        .await?
        .remove(&credential))
}

/// Which of `credentials` were withdrawn, and why, in at most three queries whatever their
/// number: the users that are gone or changed, the proxy tokens that are revoked or unknown, and
/// the tenants that are deleted (whose every credential is withdrawn). Read in
/// `scope`: a tenant's scope sees only that tenant's rows (others read as withdrawn), the system's
/// sees every tenant's.
pub async fn withdrawals(
    pool: &PgPool,
    scope: Scope,
    credentials: &[Revocable],
) -> Result<HashMap<Revocable, Withdrawn>, sqlx::Error> {
    let (mut user_tenants, mut users, mut generations) = (Vec::new(), Vec::new(), Vec::new());
    let (mut token_tenants, mut tokens) = (Vec::new(), Vec::new());
    let mut whole_tenants = Vec::new();
    for credential in credentials {
        match *credential {
            Revocable::User {
                tenant_id,
                user_id,
                generation,
            } => {
                user_tenants.push(tenant_id);
                users.push(user_id);
                generations.push(generation);
            }
            Revocable::ProxyToken {
                tenant_id,
                token_id,
            } => {
                token_tenants.push(tenant_id);
                tokens.push(token_id);
            }
            Revocable::Tenant { tenant_id } => whole_tenants.push(tenant_id),
        }
    }
    let mut withdrawn = HashMap::new();
    if credentials.is_empty() {
        return Ok(withdrawn);
    }
    let mut tx = scope.begin(pool).await?;
    for tenant_id in deleted_tenants(&mut tx, &whole_tenants).await? {
        withdrawn.insert(Revocable::Tenant { tenant_id }, Withdrawn::TenantDeleted);
    }
    if !users.is_empty() {
        // Each user asked about whose row is missing, deleted, or of another generation, or
        // whose tenant is deleted.
        let rows: Vec<(Uuid, Uuid, i32, Option<i32>, bool)> = sqlx::query_as(
            "SELECT k.tenant_id, k.user_id, k.generation, u.generation, t.tenant_id IS NULL
             FROM unnest($1::uuid[], $2::uuid[], $3::int4[]) AS k(tenant_id, user_id, generation)
             LEFT JOIN users u ON u.tenant_id = k.tenant_id AND u.user_id = k.user_id
                              AND u.deleted_at IS NULL
             LEFT JOIN tenants t ON t.tenant_id = k.tenant_id AND t.deleted_at IS NULL
             WHERE u.generation IS DISTINCT FROM k.generation OR t.tenant_id IS NULL",
        )
        .bind(&user_tenants)
        .bind(&users)
        .bind(&generations)
        .fetch_all(&mut *tx)
        .await?;
        for (tenant_id, user_id, generation, current, tenant_gone) in rows {
            let reason = if tenant_gone {
                Withdrawn::TenantDeleted
            } else if current.is_some() {
                Withdrawn::UserChanged
            } else {
                Withdrawn::UserDeleted
            };
            withdrawn.insert(
                Revocable::User {
                    tenant_id,
                    user_id,
                    generation,
                },
                reason,
            );
        }
    }
    if !tokens.is_empty() {
        // Each token asked about that is revoked or was never stored, or whose tenant is deleted.
        let rows: Vec<(Uuid, Uuid, bool, bool)> = sqlx::query_as(
            "SELECT k.tenant_id, k.token_id, p.token_id IS NOT NULL, t.tenant_id IS NULL
             FROM unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, token_id)
             LEFT JOIN proxy_tokens p ON p.tenant_id = k.tenant_id AND p.token_id = k.token_id
             LEFT JOIN tenants t ON t.tenant_id = k.tenant_id AND t.deleted_at IS NULL
             WHERE p.token_id IS NULL OR p.revoked_at IS NOT NULL OR t.tenant_id IS NULL",
        )
        .bind(&token_tenants)
        .bind(&tokens)
        .fetch_all(&mut *tx)
        .await?;
        for (tenant_id, token_id, stored, tenant_gone) in rows {
            let reason = if tenant_gone {
                Withdrawn::TenantDeleted
            } else if stored {
                Withdrawn::ProxyTokenRevoked(token_id)
            } else {
                Withdrawn::ProxyTokenUnknown(token_id)
            };
            withdrawn.insert(
                Revocable::ProxyToken {
                    tenant_id,
                    token_id,
                },
                reason,
            );
        }
    }
    tx.commit().await?;
    Ok(withdrawn)
}

/// Which of `tenants` are missing or deleted.
async fn deleted_tenants(
    tx: &mut sqlx::PgConnection,
    tenants: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT k.tenant_id
         FROM unnest($1::uuid[]) AS k(tenant_id)
         WHERE NOT EXISTS (SELECT 1 FROM tenants t
                           WHERE t.tenant_id = k.tenant_id AND t.deleted_at IS NULL)",
    )
    .bind(tenants)
    .fetch_all(tx)
    .await
}
