//! Tenant data keys for secret material (NFR-SE-003), kept wrapped under the master key.
//!
//! A tenant's first secret creates its data key (`k1`); the key is unwrapped once per process and
//! kept in memory. [`rewrap`] moves every data key to a new master key (key rotation) in one
//! transaction; the sealed secrets themselves do not change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use efms_domain::secrets::{Key, SecretError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Scope;

/// The data key every tenant starts with.
const FIRST_KEY: &str = "k1";

/// Why a data key is not available.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored data key does not unwrap under the configured master key.
    #[error("data key `{key_id}` of tenant {tenant_id} is wrapped by master key {wrapped_by}, not the configured {configured}: {source}")]
    Unwrap {
        /// The tenant.
        tenant_id: Uuid,
        /// The data key.
        key_id: String,
        /// The fingerprint of the master key that wrapped it.
        wrapped_by: String,
        /// The fingerprint of the configured master key.
        configured: String,
        /// What failed.
        source: SecretError,
    },
}

/// The tenants' data keys, unwrapped on first use with the master key.
#[derive(Clone)]
pub struct Keyring {
    pool: PgPool,
    master: Arc<Key>,
    keys: Arc<Mutex<HashMap<(Uuid, String), Key>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("master", &self.master.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring over `pool` with `master` as the key that wraps data keys.
    pub fn new(pool: PgPool, master: Key) -> Self {
        Self {
            pool,
            master: Arc::new(master),
            keys: Arc::default(),
        }
    }

    /// The key new secrets of `tenant_id` are sealed with, created on first use: its id and key.
    pub async fn active(&self, tenant_id: Uuid) -> Result<(String, Key), KeyError> {
        if let Some(key) = self.cached(tenant_id, FIRST_KEY) {
            return Ok((FIRST_KEY.to_owned(), key));
        }
        let fresh = Key::generate();
        let mut tx = Scope::Tenant(tenant_id).begin(&self.pool).await?;
        sqlx::query!(
            r#"INSERT INTO tenant_data_keys (tenant_id, key_id, wrapped, master_key)
               VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, key_id) DO NOTHING"#,
            tenant_id,
            FIRST_KEY,
            self.master.wrap(&fresh),
            self.master.fingerprint(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let key = self
            .load(Scope::Tenant(tenant_id), tenant_id, FIRST_KEY)
            .await?
            .expect("the data key was just stored");
        Ok((FIRST_KEY.to_owned(), key))
    }

    /// The data key `key_id` of `tenant_id`, read across tenants (the xDS server's view).
    pub async fn get(&self, tenant_id: Uuid, key_id: &str) -> Result<Option<Key>, KeyError> {
        if let Some(key) = self.cached(tenant_id, key_id) {
            return Ok(Some(key));
        }
        self.load(Scope::System, tenant_id, key_id).await
    }

    fn cached(&self, tenant_id: Uuid, key_id: &str) -> Option<Key> {
        self.keys
            .lock()
            .expect("keyring lock")
            .get(&(tenant_id, key_id.to_owned()))
            .cloned()
    }

    async fn load(
        &self,
        scope: Scope,
        tenant_id: Uuid,
        key_id: &str,
    ) -> Result<Option<Key>, KeyError> {
        let mut tx = scope.begin(&self.pool).await?;
        let row = sqlx::query!(
            "SELECT wrapped, master_key FROM tenant_data_keys WHERE tenant_id = $1 AND key_id = $2",
            tenant_id,
            key_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let key = self
            .master
            .unwrap_key(&row.wrapped)
            .map_err(|source| KeyError::Unwrap {
                tenant_id,
                key_id: key_id.to_owned(),
                wrapped_by: row.master_key,
                configured: self.master.fingerprint(),
                source,
            })?;
        self.keys
            .lock()
            .expect("keyring lock")
            .insert((tenant_id, key_id.to_owned()), key.clone());
        Ok(Some(key))
    }

    /// How many data keys are wrapped by another master key than the configured one.
    pub async fn foreign_keys(&self) -> Result<i64, KeyError> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let count = sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM tenant_data_keys WHERE master_key <> $1"#,
            self.master.fingerprint(),
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(count)
    }
}

/// Re-wraps every data key wrapped by `old` under `new`, in one transaction (key rotation).
/// Returns how many keys moved; keys already under `new` are left alone.
pub async fn rewrap(pool: &PgPool, old: &Key, new: &Key) -> Result<u64, KeyError> {
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query!(
        "SELECT tenant_id, key_id, wrapped FROM tenant_data_keys WHERE master_key = $1 FOR UPDATE",
        old.fingerprint(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut moved = 0;
    for row in rows {
        let key = old
            .unwrap_key(&row.wrapped)
            .map_err(|source| KeyError::Unwrap {
                tenant_id: row.tenant_id,
                key_id: row.key_id.clone(),
                wrapped_by: old.fingerprint(),
                configured: old.fingerprint(),
                source,
            })?;
        sqlx::query!(
            r#"UPDATE tenant_data_keys SET wrapped = $3, master_key = $4, rewrapped_at = now()
               WHERE tenant_id = $1 AND key_id = $2"#,
            row.tenant_id,
            row.key_id,
            new.wrap(&key),
            new.fingerprint(),
        )
        .execute(&mut *tx)
        .await?;
        moved += 1;
    }
    tx.commit().await?;
    Ok(moved)
}
