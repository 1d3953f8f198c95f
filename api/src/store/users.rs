//! The `users` table: a tenant's people and service accounts (never their passwords in clear).

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use sqlx::PgPool;
use uuid::Uuid;

/// A live user as stored (without the password hash).
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Its id.
    pub user_id: Uuid,
    /// Its name.
    pub username: String,
    /// Its role.
    pub role: String,
    /// `person` or `service`.
    pub kind: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its id.
    pub user_id: Uuid,
    /// Its name.
    pub username: &'a str,
    /// Its role.
    pub role: &'a str,
    /// `person` or `service`.
    pub kind: &'a str,
    /// A person's password hash.
    pub password_hash: Option<String>,
    /// Who creates it.
    pub created_by: &'a str,
}

/// Creates a user; `None` when the tenant has a user of that name already.
pub async fn create(
    pool: &PgPool,
    user: NewUser<'_>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut tx = Scope::Tenant(user.tenant_id).begin(pool).await?;
    let inserted = sqlx::query!(
        r#"INSERT INTO users (tenant_id, user_id, username, role, kind, password_hash, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING created_at"#,
        user.tenant_id,
        user.user_id,
        user.username,
        user.role,
        user.kind,
        user.password_hash,
        user.created_by,
    )
    .fetch_one(&mut *tx)
    .await;
    match inserted {
        Ok(row) => {
            tx.commit().await?;
            Ok(Some(row.created_at))
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => Ok(None),
        Err(error) => Err(error),
    }
}

/// What a change to a user came to.
#[derive(Debug, Clone)]
pub enum Changed {
    /// The tenant has no such live user.
    Missing,
    /// A password was given for a service account; nothing changed.
    PasswordForService,
    /// The user as changed.
    Done {
        /// The user.
        user: UserRow,
        /// The generation of its role and password now: tokens naming an older one are refused.
        generation: i32,
    },
}

/// Gives a live user a new role and/or password hash and a new generation. `password_given` says
/// whether the request named a password (refused for a service account).
pub async fn change(
    pool: &PgPool,
    (tenant_id, user_id): (Uuid, Uuid),
    role: Option<String>,
    hash: Option<String>,
    password_given: bool,
) -> Result<Changed, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let Some(kind) = sqlx::query_scalar!(
        r#"SELECT kind FROM users WHERE tenant_id = $1 AND user_id = $2 AND deleted_at IS NULL
           FOR UPDATE"#,
        tenant_id,
        user_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Changed::Missing);
    };
    if kind == "service" && password_given {
        return Ok(Changed::PasswordForService);
    }
    let row = sqlx::query!(
        r#"UPDATE users SET role = coalesce($3, role), password_hash = coalesce($4, password_hash),
                            generation = generation + 1
           WHERE tenant_id = $1 AND user_id = $2
           RETURNING username, role, kind, created_at, created_by, generation"#,
        tenant_id,
        user_id,
        role,
        hash,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Changed::Done {
        user: UserRow {
            user_id,
            username: row.username,
            role: row.role,
            kind: row.kind,
            created_at: row.created_at,
            created_by: row.created_by,
        },
        generation: row.generation,
    })
}

/// The tenant's live users by name (only `only`, when given).
pub async fn live(
    pool: &PgPool,
    tenant_id: Uuid,
    only: Option<Uuid>,
) -> Result<Vec<UserRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT user_id, username, role, kind, created_at, created_by FROM users
           WHERE tenant_id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR user_id = $2)
           ORDER BY username"#,
        tenant_id,
        only,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| UserRow {
            user_id: row.user_id,
            username: row.username,
            role: row.role,
            kind: row.kind,
            created_at: row.created_at,
            created_by: row.created_by,
        })
        .collect())
}

/// Deletes a live user; false when the tenant has no such live user.
pub async fn delete(pool: &PgPool, tenant_id: Uuid, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let deleted = sqlx::query!(
        r#"UPDATE users SET deleted_at = now()
           WHERE tenant_id = $1 AND user_id = $2 AND deleted_at IS NULL"#,
        tenant_id,
        user_id,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted > 0)
}

/// What logging in checks of a person.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user's id.
    pub user_id: Uuid,
    /// Its role.
    pub role: String,
    /// Its password hash.
    pub password_hash: Option<String>,
    /// The generation of its role and password.
    pub generation: i32,
}

/// The credentials of the live person `username` of the tenant, if there is one.
pub async fn person_credentials(
    pool: &PgPool,
    tenant_id: Uuid,
    username: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let user = sqlx::query!(
        r#"SELECT user_id, role, password_hash, generation FROM users
           WHERE tenant_id = $1 AND username = $2 AND deleted_at IS NULL AND kind = 'person'"#,
        tenant_id,
        username,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(user.map(|user| Credentials {
        user_id: user.user_id,
        role: user.role,
        password_hash: user.password_hash,
        generation: user.generation,
    }))
}
