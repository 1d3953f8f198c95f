//! Sharing between tenants (FR-MT-005), as the write path sees it: what other tenants share with
//! a tenant for its commits to refer to, read under a lock that orders the commit against
//! revocations of its grants; and an owner's changes that would break what it shares.

use efms_domain::config::shared::{self, Shared, SHAREABLE_KINDS};
use efms_domain::config::{Change, ConfigCommand, MAIN_BRANCH};
use efms_domain::envoy::ResourceKind;
use sqlx::PgPool;
use uuid::Uuid;

use super::ConfigServiceError;
use crate::scope::Scope;

/// The shareable kind a stored kind name stands for.
pub fn shareable(kind: &str) -> Option<ResourceKind> {
    SHAREABLE_KINDS
        .into_iter()
        .find(|shareable| shareable.to_string() == kind)
}

/// The advisory lock that orders a grantee's commits against revocations of its grants.
pub fn grantee_lock(grantee_id: Uuid) -> i64 {
    let (high, low) = grantee_id.as_u64_pair();
    i64::from_be_bytes((high ^ low ^ GRANTS_LOCK_SALT).to_be_bytes())
}

/// How long a commit waits for a revocation of one of its tenant's grants to be decided.
const REVOCATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the grantee locks apart from any other advisory lock.
const GRANTS_LOCK_SALT: u64 = 0x6566_6d73_6772_6e74;

/// Held by a commit of a tenant that others share with, from reading what is shared with it
/// until its commit is appended and projected: a revocation of one of its grants waits for it,
/// and then sees its references. Released when dropped.
#[derive(Debug, Default)]
pub struct SharedGuard(Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl SharedGuard {
    /// Releases the lock now.
    pub async fn release(self) {
        if let Some(tx) = self.0 {
            let _ = tx.rollback().await;
        }
    }
}

/// What other tenants share with `tenant`, for its commits to refer to: every granted resource
/// that exists on its owner's `main`, with each template's document, unless its owner is deleted
/// (nothing may come to depend on a tenant about to be purged); and, when something is
/// shared, the guard to hold until the commit is projected.
pub async fn shared_with(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<(Shared, SharedGuard), ConfigServiceError> {
    // Most tenants are granted nothing: they need no lock, since their commits cannot refer to
    // anything of another tenant.
    if read_shared(pool, tenant_id).await?.is_empty() {
        return Ok((Shared::default(), SharedGuard(None)));
    }
    // Without holding a connection while a revocation is being decided: the lock is tried, and
    // tried again after a pause.
    let started = std::time::Instant::now();
    let guard = loop {
        let mut guard = pool.begin().await?;
        let locked = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock_shared($1) AS "locked!""#,
            grantee_lock(tenant_id),
        )
        .fetch_one(&mut *guard)
        .await?;
        if locked {
            break guard;
        }
        guard.rollback().await?;
        if started.elapsed() > REVOCATION_PATIENCE {
            return Err(ConfigServiceError::RevocationPending);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let shared = read_shared(pool, tenant_id).await?;
    Ok((shared, SharedGuard(Some(guard))))
}

async fn read_shared(pool: &PgPool, tenant_id: Uuid) -> Result<Shared, ConfigServiceError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT g.owner_slug, g.kind, g.name,
                  CASE WHEN g.kind = 'template' THEN r.document END AS "template?"
           FROM resource_grants g
           JOIN config_resources r
             ON r.tenant_id = g.tenant_id AND r.branch = 'main' AND r.kind = g.kind
                AND r.name = g.name
           WHERE g.grantee_id = $1 AND efms_tenant_is_live(g.tenant_id)"#,
        tenant_id,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut shared = Shared::default();
    for row in rows {
        if let Some(kind) = shareable(&row.kind) {
            shared.insert(
                kind,
                shared::qualified(&row.owner_slug, &row.name),
                row.template,
            );
        }
    }
    Ok(shared)
}

/// An owner's commit on `main` may not delete a resource it shares, nor make a shared cluster
/// use a secret (secrets are never shared).
pub async fn check_owner_changes(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    command: &ConfigCommand,
) -> Result<(), ConfigServiceError> {
    let changes = command.edits();
    if branch != MAIN_BRANCH || changes.is_empty() {
        return Ok(());
    }
    // (kind, name, what the change would do wrong if the resource is shared)
    let mut watched: Vec<(ResourceKind, &str, String)> = Vec::new();
    for change in changes {
        match change {
            Change::Delete { kind, name, .. } if SHAREABLE_KINDS.contains(kind) => {
                watched.push((*kind, name, "deleting it".to_owned()));
            }
            Change::Put {
                kind, name, refs, ..
            } if SHAREABLE_KINDS.contains(kind) => {
                if let Some(secret) = refs.iter().find(|r| r.kind == ResourceKind::Secret) {
                    watched.push((
                        *kind,
                        name,
                        format!(
                            "making it use secret `{}` (secrets are never shared)",
                            secret.name
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    if watched.is_empty() {
        return Ok(());
    }
    let kinds: Vec<String> = watched.iter().map(|(k, _, _)| k.to_string()).collect();
    let names: Vec<&str> = watched.iter().map(|(_, n, _)| *n).collect();
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let granted = sqlx::query!(
        r#"SELECT g.kind, g.name, string_agg(g.grantee_slug, ', ' ORDER BY g.grantee_slug) AS "grantees!"
           FROM resource_grants g
           JOIN UNNEST($2::text[], $3::text[]) AS u(kind, name) ON g.kind = u.kind AND g.name = u.name
           WHERE g.tenant_id = $1
           GROUP BY g.kind, g.name"#,
        tenant_id,
        &kinds,
        &names as &[&str],
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(row) = granted.first() else {
        return Ok(());
    };
    let what = watched
        .iter()
        .find(|(k, n, _)| k.to_string() == row.kind && *n == row.name)
        .map_or("this change", |(_, _, what)| what.as_str());
    Err(ConfigServiceError::Shared(format!(
        "{} `{}` is shared with {}; {what} is refused while it is shared (revoke the grants first)",
        row.kind, row.name, row.grantees
    )))
}
