//! Liveness, readiness and metrics: unauthenticated, for orchestrators and Prometheus.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::PgPool;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// `GET /healthz`: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "Alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the process can serve requests (the database answers).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, description = "Ready"), (status = 503, description = "The database does not answer", body = crate::problem::Problem)))]
pub async fn readyz(State(pool): State<PgPool>) -> Result<impl IntoResponse, ApiError> {
    match crate::store::ping(&pool).await {
        Ok(()) => Ok((
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok" })),
        )),
        Err(error) => {
            tracing::warn!(%error, "readiness: database check failed");
            Err(ApiError::Unavailable(
                "the database does not answer".to_owned(),
            ))
        }
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(
    State(metrics): State<Arc<Metrics>>,
    State(pool): State<sqlx::PgPool>,
) -> impl IntoResponse {
    match efms_projections::fleet::queries::fleet_counts(&pool).await {
        Ok(counts) => metrics.set_fleet(&counts),
        Err(error) => tracing::warn!(%error, "the fleet's counts cannot be read for the metrics"),
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
