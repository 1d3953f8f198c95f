//! The `bulk_jobs` table: a bulk job's record, which any replica reads to answer for it.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A job as recorded.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Its id.
    pub job_id: Uuid,
    /// `queued`, `validating`, `committing`, `succeeded` or `failed`.
    pub state: String,
    /// The branch it writes.
    pub branch: String,
    /// Operations in the request.
    pub total: i32,
    /// Operations validated so far.
    pub validated: i32,
    /// Changes applied (when succeeded).
    pub applied: i32,
    /// The revision it landed in.
    pub revision: Option<i64>,
    /// Why it failed.
    pub problem: Option<Value>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its record last moved.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A new job to record.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its id.
    pub job_id: Uuid,
    /// The branch it writes.
    pub branch: &'a str,
    /// Who asked, as the audit trail names them.
    pub actor: &'a str,
    /// Operations in the request.
    pub total: i32,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobEnd {
    /// `succeeded` or `failed`.
    pub state: &'static str,
    /// Changes applied.
    pub applied: i32,
    /// The revision it landed in.
    pub revision: Option<i64>,
    /// The problem document of a failure.
    pub problem: Option<Value>,
}

/// Records `job` as queued unless its tenant already runs `max_running` jobs whose records moved
/// within `stale_after`; then answers how many run, and records nothing. The count and the record
/// are made under a lock of the tenant's, so that concurrent starts, on any replica, cannot all see
/// room for one more.
pub async fn start(
    pool: &PgPool,
    job: NewJob<'_>,
    max_running: u32,
    stale_after: std::time::Duration,
) -> Result<Result<(), i64>, sqlx::Error> {
    let mut tx = Scope::Tenant(job.tenant_id).begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(job_start_lock(job.tenant_id))
        .execute(&mut *tx)
        .await?;
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bulk_jobs
         WHERE tenant_id = $1 AND finished_at IS NULL
           AND updated_at > now() - make_interval(secs => $2)",
    )
    .bind(job.tenant_id)
    .bind(stale_after.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    if running >= i64::from(max_running) {
        return Ok(Err(running));
    }
    sqlx::query!(
        r#"INSERT INTO bulk_jobs (tenant_id, job_id, branch, actor, state, total)
           VALUES ($1, $2, $3, $4, 'queued', $5)"#,
        job.tenant_id,
        job.job_id,
        job.branch,
        job.actor,
        job.total,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// The advisory lock that orders the starts of a tenant's jobs.
fn job_start_lock(tenant_id: Uuid) -> i64 {
    let (high, low) = tenant_id.as_u64_pair();
    i64::from_be_bytes((high ^ low ^ JOBS_LOCK_SALT).to_be_bytes())
}

/// Keeps the job start locks apart from any other advisory lock.
const JOBS_LOCK_SALT: u64 = 0x6566_6d73_6a6f_6273;

/// Records how far a running job is.
pub async fn record_progress(
    pool: &PgPool,
    tenant_id: Uuid,
    job_id: Uuid,
    phase: &str,
    validated: usize,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    sqlx::query!(
        r#"UPDATE bulk_jobs SET state = $3, validated = LEAST($4, total), updated_at = now()
           WHERE tenant_id = $1 AND job_id = $2 AND finished_at IS NULL"#,
        tenant_id,
        job_id,
        phase,
        i32::try_from(validated).unwrap_or(i32::MAX),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records the end of a job.
pub async fn finish(
    pool: &PgPool,
    tenant_id: Uuid,
    job_id: Uuid,
    end: JobEnd,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    sqlx::query!(
        r#"UPDATE bulk_jobs
           SET state = $3, applied = $4, revision = $5, problem = $6,
               validated = CASE WHEN $3 = 'succeeded' THEN total ELSE validated END,
               updated_at = now(), finished_at = now()
           WHERE tenant_id = $1 AND job_id = $2"#,
        tenant_id,
        job_id,
        end.state,
        end.applied,
        end.revision,
        end.problem,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A tenant's job, if it exists.
pub async fn load(
    pool: &PgPool,
    tenant_id: Uuid,
    job_id: Uuid,
) -> Result<Option<JobRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query!(
        r#"SELECT job_id, state, branch, total, validated, applied, revision, problem,
                  created_at, updated_at, finished_at
           FROM bulk_jobs WHERE tenant_id = $1 AND job_id = $2"#,
        tenant_id,
        job_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|row| JobRow {
        job_id: row.job_id,
        state: row.state,
        branch: row.branch,
        total: row.total,
        validated: row.validated,
        applied: row.applied,
        revision: row.revision,
        problem: row.problem,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    }))
}
