//! Bulk requests of more than [`SYNC_LIMIT`] operations run as jobs (API-BK-003): the request
//! answers 202 with the job at once; `GET /api/v1/tenants/{tenant}/jobs/{id}` says how far it is
//! (state, operations validated and applied, total) and, at the end, its revision or the problem
//! the synchronous answer would have been. The job is all or nothing like any bulk request.
//!
//! The job runs on the replica that accepted it and records its progress in `bulk_jobs`, so any
//! replica answers for it. A job whose record stops moving for [`STALE_AFTER`] (its replica
//! stopped) is reported failed; its commit is atomic, so it either landed (a `bulk` revision) or
//! left nothing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_projections::fleet::operations;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::access::{ReadConfig, Tenant, WriteConfig};
use crate::error::ApiError;
use crate::limits::MAX_JOBS_PER_TENANT;
use crate::state::AppState;
use crate::store::jobs as store;

/// The `{id}` of a job route.
#[derive(Debug, Deserialize)]
pub struct JobId {
    id: String,
}

/// The most operations a bulk request answers synchronously; more run as a job.
pub const SYNC_LIMIT: usize = 1_000;
/// How often a running job records its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// A job whose record has not moved for this long is no longer running.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// How far a running job is, shared with the task that records it.
#[derive(Debug, Default)]
pub struct Progress {
    validated: AtomicUsize,
    committing: AtomicBool,
}

impl efms_commands::configuration::bulk::BulkProgress for Progress {
    fn validated(&self, count: usize) {
        self.validated.store(count, Ordering::Relaxed);
    }

    fn committing(&self, total: usize) {
        self.validated.store(total, Ordering::Relaxed);
        self.committing.store(true, Ordering::Relaxed);
    }
}

/// A job as the API shows it: a bulk write (`kind` `bulk`) or an operation on a container
/// (`container_operation`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Its id.
    id: Uuid,
    /// `bulk` or `container_operation`.
    kind: &'static str,
    /// `queued`, `validating`, `committing`, `succeeded` or `failed` for a bulk; `running`,
    /// `succeeded` or `failed` for a container operation.
    state: String,
    /// The branch a bulk writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<String>,
    /// Operations in a bulk.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i32>,
    /// Operations of a bulk validated so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    validated: Option<i32>,
    /// Changes a bulk applied (when succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<i32>,
    /// A container operation: its `action`, `vm`, `container_id` (for a launch, the container
    /// made, once it is), `node_id` of a launch, `requested_by`, and what was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    operation: Option<Value>,
    /// The revision it landed in (when succeeded and something changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// Why it failed: the problem document the synchronous request would have answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    problem: Option<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
}

/// What a job that succeeded records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDone {
    /// Changes applied.
    pub applied: usize,
    /// The revision it landed in (`None`: nothing changed).
    pub revision: Option<i64>,
}

/// Records a new job of `total` operations on `branch` and runs `work` in the background under
/// the server's shutdown; answers 202 with the job. `work` reports its progress through the
/// [`Progress`] it is given.
pub(crate) async fn start<W, F>(
    state: AppState,
    tenant: &Tenant<WriteConfig>,
    branch: &str,
    total: usize,
    work: W,
) -> Result<Response, ApiError>
where
    W: FnOnce(Arc<Progress>) -> F + Send + 'static,
    F: Future<Output = Result<JobDone, ApiError>> + Send + 'static,
{
    if state.background.is_stopping() {
        return Err(ApiError::Unavailable(
            crate::background::Stopping.to_string(),
        ));
    }
    let job_id = Uuid::now_v7();
    let total = i32::try_from(total).map_err(ApiError::internal)?;
    let limit = state.limits.max_jobs_per_tenant;
    let new_job = store::NewJob {
        tenant_id: tenant.tenant_id,
        job_id,
        branch,
        actor: &tenant.actor().audit_name(),
        total,
    };
    if let Err(running) = store::start(&state.pool, new_job, limit, STALE_AFTER).await? {
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "tenant `{}` has {running} bulk jobs running; the limit is {limit} ({MAX_JOBS_PER_TENANT}). \
                 Retry when one has finished, or send up to {SYNC_LIMIT} operations to be applied at once",
                tenant.slug
            ),
            retry_after_seconds: JOB_RETRY_AFTER_SECONDS,
        });
    }
    let view = load(&state, tenant.tenant_id, job_id).await?;
    let tenant_id = tenant.tenant_id;
    if let Err(stopping) = state
        .background
        .spawn(run(state.clone(), tenant_id, job_id, work))
    {
        let refused = Err(ApiError::Unavailable(stopping.to_string()));
        if let Err(error) = finish(&state, tenant_id, job_id, refused).await {
            tracing::error!(%job_id, %error, "cannot record a bulk job refused at stop");
        }
    }
    accepted(view, tenant.slug.as_str())
}

/// When a refused job may be tried again.
const JOB_RETRY_AFTER_SECONDS: u32 = 5;

/// Runs a job to its end, recording its progress meanwhile.
async fn run<W, F>(state: AppState, tenant_id: Uuid, job_id: Uuid, work: W)
where
    W: FnOnce(Arc<Progress>) -> F,
    F: Future<Output = Result<JobDone, ApiError>>,
{
    let progress = Arc::new(Progress::default());
    let recorder = {
        let (state, progress) = (state.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                let phase = if progress.committing.load(Ordering::Relaxed) {
                    "committing"
                } else {
                    "validating"
                };
                let validated = progress.validated.load(Ordering::Relaxed);
                if let Err(error) =
                    store::record_progress(&state.pool, tenant_id, job_id, phase, validated).await
                {
                    tracing::warn!(%job_id, %error, "cannot record a bulk job's progress");
                }
                tokio::time::sleep(PROGRESS_INTERVAL).await;
            }
        })
    };
    let outcome = work(progress).await;
    recorder.abort();
    let _ = recorder.await;
    if let Err(error) = finish(&state, tenant_id, job_id, outcome).await {
        tracing::error!(%job_id, %error, "cannot record the end of a bulk job");
    }
}

async fn finish(
    state: &AppState,
    tenant_id: Uuid,
    job_id: Uuid,
    outcome: Result<JobDone, ApiError>,
) -> Result<(), sqlx::Error> {
    let end = match outcome {
        Ok(done) => store::JobEnd {
            state: "succeeded",
            applied: i32::try_from(done.applied).unwrap_or(i32::MAX),
            revision: done.revision,
            problem: None,
        },
        Err(error) => store::JobEnd {
            state: "failed",
            applied: 0,
            revision: None,
            problem: Some(error.problem()),
        },
    };
    store::finish(&state.pool, tenant_id, job_id, end).await
}

/// The job `job_id`: a bulk, else an operation on a container.
pub(crate) async fn load(
    state: &AppState,
    tenant_id: Uuid,
    job_id: Uuid,
) -> Result<JobView, ApiError> {
    let Some(row) = store::load(&state.pool, tenant_id, job_id).await? else {
        let operation = operations::get_operation(&state.pool, tenant_id, job_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("there is no job `{job_id}`")))?;
        return Ok(operation_view(operation));
    };
    let interrupted = row.finished_at.is_none()
        && (Utc::now() - row.updated_at).to_std().unwrap_or_default() > STALE_AFTER;
    let (job_state, problem) = if interrupted {
        (
            "failed".to_owned(),
            Some(serde_json::json!({
                "type": "urn:efms:problem:interrupted",
                "title": "Interrupted",
                "status": 503,
                "detail": "the replica running the job stopped; a bulk commit is all or nothing, \
                           so it either landed as a `bulk` revision after `created_at` or changed nothing",
            })),
        )
    } else {
        (row.state, row.problem)
    };
    Ok(JobView {
        id: row.job_id,
        kind: "bulk",
        state: job_state,
        branch: Some(row.branch),
        total: Some(row.total),
        validated: Some(row.validated),
        applied: Some(row.applied),
        operation: None,
        revision: row.revision,
        problem,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    })
}

/// An operation on a container as a job.
pub(crate) fn operation_view(row: operations::OperationRow) -> JobView {
    let problem = row.error.as_ref().map(|error| {
        serde_json::json!({
            "type": "urn:efms:problem:container-operation-failed",
            "title": "Container operation failed",
            "status": 502,
            "detail": error,
        })
    });
    let operation = serde_json::json!({
        "action": row.action,
        "vm": row.vm_name,
        "container_id": row.container_id,
        "node_id": row.node_id,
        "requested_by": row.requested_by,
        "image_id": row.image_id,
        "envoy_version": row.envoy_version,
        "asked": row.operation,
    });
    JobView {
        id: row.operation_id,
        kind: "container_operation",
        state: row.state,
        branch: None,
        total: None,
        validated: None,
        applied: None,
        operation: Some(operation),
        revision: None,
        problem,
        created_at: row.requested_at,
        updated_at: row.finished_at.unwrap_or(row.requested_at),
        finished_at: row.finished_at,
    }
}

/// Answers 202 with `view`, located at the job's URL in `tenant`.
pub(crate) fn accepted(view: JobView, tenant: &str) -> Result<Response, ApiError> {
    let location = format!("/api/v1/tenants/{tenant}/jobs/{}", view.id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `GET /api/v1/tenants/{tenant}/jobs/{id}`: how far a job is (a bulk, or an operation on a
/// container).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jobs/{id}", tag = "configuration",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
    Path(JobId { id }): Path<JobId>,
) -> Result<Json<JobView>, ApiError> {
    let job_id =
        Uuid::parse_str(&id).map_err(|_| ApiError::NotFound(format!("there is no job `{id}`")))?;
    Ok(Json(load(&state, tenant.tenant_id, job_id).await?))
}

/// The bulk jobs' route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/tenants/{tenant}/jobs/{id}", axum::routing::get(get))
}
