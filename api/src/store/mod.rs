//! The tables that are not event-sourced (users, grants, quotas, jobs, proxy tokens, the request
//! audit): every SQL statement the HTTP layer runs on them lives here, one module per table.

pub mod grants;
pub mod jobs;
pub mod proxy_tokens;
pub mod quotas;
pub mod request_audit;
pub mod users;

/// Whether the database answers.
pub async fn ping(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(pool)
        .await
        .map(|_| ())
}
