//! The proxies' own statistics of a resource as time series (FR-RT-005, FR-LN-005, FR-CL-005):
//! `GET /api/v1/tenants/{tenant}/metrics/{routes|listeners|clusters}/{name}`. A route
//! configuration is broken down by its virtual hosts and their routes' `stat_prefix`es, a listener
//! by its HTTP connection managers; the counts are the sum over the tenant's proxies (or one
//! group's), never per proxy.

pub mod impact;
mod resolve;
mod views;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Datelike, TimeDelta, Utc};
use efms_domain::config::MAIN_BRANCH;
use efms_domain::envoy::{check_name, ResourceKind};
use efms_domain::telemetry::{StatScope, StatValues};
use efms_projections::config::{self as read, AsOf};
use efms_projections::telemetry::{series, Series, SeriesQuery};
use serde::Deserialize;

use crate::access::{ReadConfig, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::state::AppState;
pub use impact::{impact, ChangeImpact, Impact};
pub use views::{LatencyMs, Metrics, Part, Point, Responses};

/// `{kind}/{name}` of a metrics route.
#[derive(Debug, Deserialize)]
pub struct MetricsPath {
    kind: String,
    name: String,
}

/// `?group=&from=&to=&step=` of a series.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// Count only this group's proxies (default: every group of the tenant).
    group: Option<String>,
    /// From (RFC 3339; default an hour before `to`), rounded down to a whole second (a whole
    /// minute for a step of a minute or more).
    from: Option<DateTime<Utc>>,
    /// To (RFC 3339; default now).
    to: Option<DateTime<Utc>>,
    /// The step in seconds (1 to 86400; default 60). A step of a minute or more reads the
    /// one-minute rollups (kept 30 days by default) where the raw 10 s buckets (a day) are gone.
    step: Option<i64>,
}

/// The most points a series may have.
const MOST_POINTS: i64 = 10_000;

/// `GET /api/v1/tenants/{tenant}/metrics/{kind}/{name}`: the series of a route configuration
/// (`routes`), a listener (`listeners`) or a cluster (`clusters`).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/metrics/{kind}/{name}", tag = "metrics",
    params(("tenant" = String, Path, description = "Tenant slug"),
        ("kind" = String, Path, description = "routes, listeners or clusters"),
        ("name" = String, Path, description = "The resource's name"), SeriesParams),
    responses((status = 200, description = "The series, per step", body = Metrics),
        (status = 400, description = "Malformed query", body = crate::problem::Problem),
        (status = 404, description = "No such kind or resource", body = crate::problem::Problem),
        (status = 422, description = "Bad range or step", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
    Path(path): Path<MetricsPath>,
    ApiQuery(params): ApiQuery<SeriesParams>,
) -> Result<Json<Metrics>, ApiError> {
    if check_name(&path.name).is_err() {
        return Err(ApiError::NotFound(format!(
            "there is no resource `{}`",
            path.name.escape_default()
        )));
    }
    let mut errors = Vec::new();
    for (name, at) in [("from", params.from), ("to", params.to)] {
        if at.is_some_and(|at| !(1970..=9999).contains(&at.year())) {
            errors.push(FieldError::parameter(name, "a time from 1970 to 9999"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let to = params.to.unwrap_or_else(Utc::now);
    let step = params.step.unwrap_or(60);
    if let Some(Err(problem)) = params.group.as_deref().map(check_name) {
        errors.push(FieldError::parameter("group", problem));
    }
    if !(1..=86_400).contains(&step) {
        errors.push(FieldError::parameter("step", "1 to 86400 seconds"));
    }
    let step = step.clamp(1, 86_400);
    let from = params.from.unwrap_or(to - TimeDelta::hours(1));
    // Whole seconds (the buckets'), whole minutes for a step that reads the rollups.
    let whole = if step >= 60 { 60 } else { 1 };
    let from =
        DateTime::from_timestamp(from.timestamp().div_euclid(whole) * whole, 0).unwrap_or(from);
    if from >= to {
        errors.push(FieldError::parameter("from", "before `to`"));
    } else if (to - from).num_seconds() / step > MOST_POINTS {
        errors.push(FieldError::parameter(
            "step",
            format!("at most {MOST_POINTS} steps between `from` and `to`"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let window = Window {
        state: &state,
        tenant_id: tenant.tenant_id,
        group: params.group.as_deref(),
        from,
        to,
        step,
    };
    let (points, parts, notes) = match path.kind.as_str() {
        "clusters" => {
            let all = window
                .read(StatScope::Cluster, std::slice::from_ref(&path.name))
                .await?;
            (window.points(all.first()), Vec::new(), Vec::new())
        }
        "listeners" => listener(&window, &path.name).await?,
        "routes" => route_configuration(&window, &path.name).await?,
        other => {
            return Err(ApiError::NotFound(format!(
                "there are no metrics of `{other}`: ask for routes, listeners or clusters"
            )))
        }
    };
    Ok(Json(Metrics::new(
        (&path.kind, &path.name, params.group.as_deref()),
        (from, to, step),
        points,
        parts,
        notes,
    )))
}

/// The range a request reads.
struct Window<'a> {
    state: &'a AppState,
    tenant_id: uuid::Uuid,
    group: Option<&'a str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: i64,
}

impl Window<'_> {
    async fn read(&self, scope: StatScope, names: &[String]) -> Result<Vec<Series>, ApiError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        Ok(series(
            &self.state.pool,
            &SeriesQuery {
                tenant_id: self.tenant_id,
                group: self.group,
                scope,
                names: Some(names),
                from: self.from,
                to: self.to,
                step: self.step,
            },
        )
        .await?)
    }

    /// The number of steps.
    fn steps(&self) -> usize {
        usize::try_from(((self.to - self.from).num_seconds() + self.step - 1) / self.step)
            .unwrap_or(0)
    }

    /// The points of `series`, or of nothing reported.
    fn points(&self, series: Option<&Series>) -> Vec<Point> {
        match series {
            Some(series) => series
                .points
                .iter()
                .map(|(at, values)| Point::new(*at, self.step, values))
                .collect(),
            None => self.sum(&[]),
        }
    }

    /// The points of the sum of `series` (zero counts where none reported).
    fn sum(&self, series: &[&Series]) -> Vec<Point> {
        (0..self.steps())
            .map(|index| {
                let offset = i64::try_from(index).unwrap_or(i64::MAX) * self.step;
                let at = self.from + TimeDelta::seconds(offset);
                let mut total = StatValues::default();
                for one in series {
                    if let Some((_, values)) = one.points.get(index) {
                        total.merge(values);
                    }
                }
                Point::new(at, self.step, &total)
            })
            .collect()
    }
}

/// The current document of resource `name` of `kind` on the main branch (404 without one).
async fn document(
    window: &Window<'_>,
    kind: ResourceKind,
    name: &str,
) -> Result<serde_json::Value, ApiError> {
    read::get_resource(
        &window.state.pool,
        window.tenant_id,
        MAIN_BRANCH,
        kind,
        name,
        AsOf::Now,
    )
    .await?
    .map(|row| row.document)
    .ok_or_else(|| ApiError::NotFound(format!("there is no {kind} `{name}`")))
}

type Answer = (Vec<Point>, Vec<Part>, Vec<String>);

/// A listener: its connections, with its HTTP connection managers' requests.
async fn listener(window: &Window<'_>, name: &str) -> Result<Answer, ApiError> {
    let names = resolve::listener_stats(&document(window, ResourceKind::Listener, name).await?);
    let own: Vec<String> = names.listener.into_iter().collect();
    let own = window.read(StatScope::Listener, &own).await?;
    let http = window.read(StatScope::Http, &names.http).await?;
    let mut points = window.sum(&http.iter().collect::<Vec<_>>());
    if let Some(own) = own.first() {
        for (point, (_, values)) in points.iter_mut().zip(&own.points) {
            point.set_connections(values);
        }
    }
    let parts = names
        .http
        .iter()
        .map(|prefix| {
            let series = http.iter().find(|series| &series.name == prefix);
            Part::new(
                "http_connection_manager",
                prefix.clone(),
                window.points(series),
            )
        })
        .collect();
    let mut notes = Vec::new();
    if names.http.is_empty() {
        notes.push(format!(
            "listener `{name}` has no HTTP connection manager: only its connections are counted"
        ));
    }
    Ok((points, parts, notes))
}

/// A route configuration: its virtual hosts (each the sum of its virtual clusters) and their
/// routes with a `stat_prefix`.
async fn route_configuration(window: &Window<'_>, name: &str) -> Result<Answer, ApiError> {
    let hosts = resolve::virtual_hosts(&document(window, ResourceKind::Route, name).await?);
    let host_names: Vec<String> = hosts.iter().map(|host| host.name.clone()).collect();
    let host_series = window.read(StatScope::VirtualHost, &host_names).await?;
    let route_series = window.read(StatScope::Route, &host_names).await?;
    let mut parts = Vec::new();
    let mut counted = Vec::new();
    let mut notes = Vec::new();
    for host in &hosts {
        let own = host_series.iter().find(|series| series.name == host.name);
        let routes: Vec<&Series> = host
            .routes
            .iter()
            .filter_map(|(_, prefix)| {
                route_series
                    .iter()
                    .find(|series| series.name == host.name && &series.detail == prefix)
            })
            .collect();
        if host.counted {
            counted.extend(own);
            parts.push(Part::new(
                "virtual_host",
                host.name.clone(),
                window.points(own),
            ));
        } else {
            // Without virtual clusters, the routes with a stat prefix are all Envoy counts.
            counted.extend(routes.iter().copied());
            parts.push(Part::new(
                "virtual_host",
                host.name.clone(),
                window.sum(&routes),
            ));
            notes.push(format!(
                "virtual host `{}` has no virtual clusters: it counts only its routes with a `stat_prefix`",
                host.name
            ));
        }
        if host.uncounted_routes > 0 {
            notes.push(format!(
                "virtual host `{}` has {} route(s) without a `stat_prefix`: Envoy keeps no statistics of them",
                host.name, host.uncounted_routes
            ));
        }
        for (route_name, prefix) in &host.routes {
            let series = route_series
                .iter()
                .find(|series| series.name == host.name && &series.detail == prefix);
            parts.push(Part::route(
                host.name.clone(),
                route_name.clone(),
                prefix.clone(),
                window.points(series),
            ));
        }
    }
    Ok((window.sum(&counted), parts, notes))
}

/// The routes of the proxies' statistics.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/tenants/{tenant}/metrics/{kind}/{name}",
            axum::routing::get(get),
        )
        .route(
            "/tenants/{tenant}/revisions/{n}/impact",
            axum::routing::get(impact),
        )
}
