//! The fleet (ADR 0011, FR-VM-001…005, FR-DC-001…005): VMs, their join tokens, containers, their
//! history and utilisation.

pub mod containers;
pub mod operations;
pub mod placement;
pub mod rollouts;
pub mod views;
pub mod vms;

use std::time::Duration;

use chrono::{DateTime, Utc};
use efms_domain::fleet::VmName;
use serde::Deserialize;

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// How long a write waits for the fleet's read models to show it.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// The most items a fleet list answers, and the default.
const MAX_LIMIT: i64 = 1_000;
const DEFAULT_LIMIT: i64 = 100;

/// The `{name}` of a VM route.
#[derive(Debug, Deserialize)]
pub struct VmPath {
    name: String,
}

impl VmPath {
    /// The name, checked (404 for a name no VM can have).
    fn name(&self) -> Result<VmName, ApiError> {
        VmName::parse(self.name.as_str())
            .map_err(|_| ApiError::NotFound(format!("there is no VM `{}`", self.name)))
    }
}

/// `?at=` of a read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// Show it as it was at this moment (RFC 3339).
    at: Option<DateTime<Utc>>,
}

/// A list's `limit`, checked.
fn limit(asked: Option<i64>) -> Result<i64, FieldError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        Some(_) => Err(FieldError::parameter(
            "limit",
            format!("from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// The fleet's routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/tenants/{tenant}/vms", post(vms::register).get(vms::list))
        .route(
            "/tenants/{tenant}/vms/{name}",
            get(vms::get).delete(vms::remove).patch(placement::change),
        )
        .route("/tenants/{tenant}/vms/{name}/token", post(vms::new_token))
        .route("/tenants/{tenant}/vms/{name}/history", get(vms::history))
        .route(
            "/tenants/{tenant}/vms/{name}/utilisation",
            get(vms::utilisation),
        )
        .route("/tenants/{tenant}/containers", get(containers::list))
        .route(
            "/tenants/{tenant}/vms/{name}/containers",
            post(operations::launch),
        )
        .route(
            "/tenants/{tenant}/containers/{id}",
            get(containers::get).delete(operations::remove),
        )
        .route(
            "/tenants/{tenant}/containers/{id}/{action}",
            post(operations::act),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/rollouts",
            post(rollouts::start),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/rollouts/{id}",
            get(rollouts::get),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/rollouts/{id}/{action}",
            post(rollouts::act),
        )
        .route(
            "/tenants/{tenant}/containers/{id}/events",
            get(containers::events),
        )
}
