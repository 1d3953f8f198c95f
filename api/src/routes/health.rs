//! Liveness, readiness and metrics (unauthenticated, for orchestrators and Prometheus), and the
//! API's fail-fast gate while the database does not answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::PgPool;

use crate::database_watch::{DatabaseState, DatabaseWatch, PROBE_TIMEOUT};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// `GET /healthz`: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "Alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the process can serve requests (the database answers). While the database
/// watch finds it down, answers 503 at once saying since when and what was found.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, description = "Ready"), (status = 503, description = "The database does not answer", body = crate::problem::Problem)))]
pub async fn readyz(
    State(pool): State<PgPool>,
    State(database): State<DatabaseWatch>,
) -> Result<impl IntoResponse, ApiError> {
    if let DatabaseState::Down { since, error } = database.current() {
        return Err(database_down(since, &error));
    }
    match tokio::time::timeout(PROBE_TIMEOUT, crate::store::ping(&pool)).await {
        Ok(Ok(())) => Ok((
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok" })),
        )),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: database check failed");
            Err(ApiError::Unavailable(format!(
                "the database does not answer: {error}"
            )))
        }
        Err(_) => Err(ApiError::Unavailable(format!(
            "the database gave no connection or answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        ))),
    }
}

/// The 503 of a request made while the database is down.
pub(crate) fn database_down(since: chrono::DateTime<chrono::Utc>, error: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "the database does not answer (since {}: {error}); nothing was done, retry later",
        since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    ))
}

/// Answers 503 at once while the database is down, and cuts a request under way when it goes
/// down (its transaction cannot commit then), instead of letting each wait for a connection.
pub async fn fail_fast(
    State(database): State<DatabaseWatch>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let DatabaseState::Down { since, error } = database.current() {
        return database_down(since, &error).into_response();
    }
    tokio::select! {
        response = next.run(request) => response,
        (since, error) = database.down() => database_down(since, &error).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(
    State(metrics): State<Arc<Metrics>>,
    State(pool): State<sqlx::PgPool>,
    State(database): State<DatabaseWatch>,
) -> impl IntoResponse {
    // While the database is down the process's own metrics are served as they stand.
    if database.current() == DatabaseState::Up {
        match efms_projections::fleet::queries::fleet_counts(&pool).await {
            Ok(counts) => metrics.set_fleet(&counts),
            Err(error) => {
                tracing::warn!(%error, "the fleet's counts cannot be read for the metrics");
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// The operations routes: liveness, readiness and metrics, outside `/api/v1`.
pub fn router() -> axum::Router<crate::state::AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}
