//! Binding a transaction to a tenant (DB-003, FR-MT-002).
//!
//! Every transaction the application opens switches to a role that owns no table, so the forced
//! row-level security policies apply to it, and names the tenant it works for. Both settings are
//! transaction-local: they vanish at COMMIT or ROLLBACK and never leak to the next user of a pooled
//! connection. They are sent with `BEGIN` in one round trip.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Whose rows a transaction may see and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One tenant's rows only (role `efms_app`).
    Tenant(Uuid),
    /// Every tenant's rows, read-only on the log (role `efms_system`): projectors and the system role.
    System,
}

impl Scope {
    /// The statement that opens a transaction in this scope.
    fn begin_statement(self) -> String {
        let (role, tenant) = match self {
            // A Uuid prints as 36 hexadecimal digits and hyphens: nothing here can be injected.
            Scope::Tenant(tenant) => ("efms_app", tenant.to_string()),
            Scope::System => ("efms_system", String::new()),
        };
        format!("BEGIN; SET LOCAL ROLE {role}; SET LOCAL app.tenant_id = '{tenant}'")
    }

    /// Opens a transaction in this scope on a pooled connection.
    pub async fn begin(self, pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin_with(self.begin_statement()).await
    }

    /// Opens a transaction in this scope whose commit does not wait for its WAL to reach the disk
    /// (`synchronous_commit = off`): for facts that are not history and may be repeated
    /// harmlessly (heartbeats, samples, where an agent's reports stand). A crash of Postgres can
    /// lose the last fraction of a second of such commits, never one that a later flushed commit
    /// follows, and never a torn one.
    pub async fn begin_unflushed(
        self,
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let statement = format!(
            "{}; SET LOCAL synchronous_commit = off",
            self.begin_statement()
        );
        pool.begin_with(statement).await
    }

    /// Opens a transaction in this scope on a connection the caller holds.
    pub async fn begin_on(
        self,
        conn: &mut PgConnection,
    ) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        use sqlx::Connection as _;
        conn.begin_with(self.begin_statement()).await
    }
}
