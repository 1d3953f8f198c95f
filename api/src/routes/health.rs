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
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the process can serve requests (the database answers).
pub async fn readyz(State(pool): State<PgPool>) -> Result<impl IntoResponse, ApiError> {
    match sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(&pool)
        .await
    {
        Ok(_) => Ok((
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
pub async fn metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
