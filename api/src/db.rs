//! Connecting to Postgres: create the database when it is missing, pool, migrate.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

use crate::settings::DatabaseConfig;

/// Connects a pool to the configured database, creating the database first if it does not exist.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    use anyhow::Context as _;
    create_database_if_missing(&config.options)
        .await
        .context("failed to create the database")?;
    pool_options(config.max_connections)
        .connect_with(config.options.clone())
        .await
        .context("failed to connect to the database (DATABASE_URL)")
}

/// How the process pools its connections: at most `max_connections`.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A failed connection shows as a failed query (503); pinging on every checkout would
        // cost a round trip per transaction.
        .test_before_acquire(false)
        // Under load a request may wait this long for a connection; a database that is down is
        // answered at once instead, by the database watch (`crate::database_watch`).
        .acquire_timeout(std::time::Duration::from_secs(10))
}

/// Applies the pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    efms_commands::MIGRATOR
        .run(pool)
        .await
        .context("failed to apply the database migrations")
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    match options.connect().await {
        Ok(conn) => return conn.close().await,
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {}
        Err(error) => return Err(error),
    }
    let name = options.get_database().unwrap_or("postgres").to_owned();
    tracing::info!(database = %name, "creating the database");
    let mut admin = options.clone().database("postgres").connect().await?;
    let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::raw_sql(&statement).execute(&mut admin).await {
        // Another process created it meanwhile: just as good.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P04") => {}
        other => {
            other?;
        }
    }
    admin.close().await
}
