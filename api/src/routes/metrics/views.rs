//! What the metrics routes answer: a point per step of a series.

use chrono::{DateTime, Utc};
use efms_domain::telemetry::StatValues;
use serde::Serialize;

/// Responses by class.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Responses {
    #[serde(rename = "2xx")]
    ok: i64,
    #[serde(rename = "3xx")]
    redirect: i64,
    #[serde(rename = "4xx")]
    client_error: i64,
    #[serde(rename = "5xx")]
    server_error: i64,
}

/// Request latency in milliseconds, read from the proxies' histograms (a quantile lies in the
/// histogram bucket that holds it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LatencyMs {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    /// How many requests were timed.
    samples: i64,
}

/// One step of a series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The step's start.
    at: DateTime<Utc>,
    /// Requests in the step.
    requests: i64,
    /// Requests per second over the step.
    requests_per_second: f64,
    /// Responses by class.
    responses: Responses,
    /// The share of responses that were 5xx (`null` without responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    error_ratio: Option<f64>,
    /// Request latency (`null` without timed requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<LatencyMs>,
    /// Retries.
    retries: i64,
    /// New connections.
    connections_new: i64,
    /// Open connections (mean over the step, summed over proxies).
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_active: Option<i64>,
    /// Bytes received.
    bytes_in: i64,
    /// Bytes sent.
    bytes_out: i64,
    /// Circuit breakers open (clusters).
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_breakers_open: Option<i64>,
    /// Healthy endpoints (clusters; summed over proxies).
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints_healthy: Option<i64>,
    /// Endpoints (clusters; summed over proxies).
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints_total: Option<i64>,
}

impl Point {
    /// The point of a step of `step` seconds starting `at`.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn new(at: DateTime<Utc>, step: i64, values: &StatValues) -> Self {
        let answered: i64 = values.responses.iter().sum();
        let latency = &values.latency;
        Self {
            at,
            requests: values.requests,
            requests_per_second: values.requests as f64 / step.max(1) as f64,
            responses: Responses {
                ok: values.responses[0],
                redirect: values.responses[1],
                client_error: values.responses[2],
                server_error: values.responses[3],
            },
            error_ratio: (answered > 0).then(|| values.responses[3] as f64 / answered as f64),
            latency_ms: latency.quantile(0.5).map(|p50| LatencyMs {
                p50,
                p90: latency.quantile(0.9).unwrap_or(p50),
                p99: latency.quantile(0.99).unwrap_or(p50),
                mean: latency.mean().unwrap_or(p50),
                samples: latency.count,
            }),
            retries: values.retries,
            connections_new: values.connections_new,
            connections_active: values.connections_active,
            bytes_in: values.bytes_in,
            bytes_out: values.bytes_out,
            circuit_breakers_open: values.circuit_breakers_open,
            endpoints_healthy: values.endpoints_healthy,
            endpoints_total: values.endpoints_total,
        }
    }
}

impl Point {
    /// The same point with its rate over `seconds` (what has passed of a step of `step`).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn over_seconds(mut self, seconds: i64, step: i64) -> Self {
        if seconds < step {
            self.requests_per_second = self.requests as f64 / seconds.max(1) as f64;
        }
        self
    }

    /// Takes the connection counts of `values` (a listener's own, over its connection
    /// managers').
    pub(crate) fn set_connections(&mut self, values: &StatValues) {
        self.connections_new = values.connections_new;
        self.connections_active = values.connections_active;
    }
}

/// A part of a resource and its series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Part {
    /// What it is: `virtual_host`, `route` or `http_connection_manager`.
    kind: &'static str,
    /// Its name (a virtual host's name, a route's `stat_prefix`, a connection manager's
    /// `stat_prefix`).
    name: String,
    /// For a route, its virtual host.
    #[serde(skip_serializing_if = "Option::is_none")]
    virtual_host: Option<String>,
    /// For a route, its `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    route_name: Option<String>,
    /// Its series.
    points: Vec<Point>,
}

impl Part {
    /// A part named `name` of kind `kind`.
    pub(crate) fn new(kind: &'static str, name: String, points: Vec<Point>) -> Self {
        Self {
            kind,
            name,
            virtual_host: None,
            route_name: None,
            points,
        }
    }

    /// A route of virtual host `host`.
    pub(crate) fn route(
        host: String,
        route_name: Option<String>,
        prefix: String,
        points: Vec<Point>,
    ) -> Self {
        Self {
            kind: "route",
            name: prefix,
            virtual_host: Some(host),
            route_name,
            points,
        }
    }
}

/// A resource's series, with its parts'.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Metrics {
    /// `routes`, `listeners` or `clusters`.
    kind: String,
    /// The resource's name.
    name: String,
    /// The group whose proxies are counted (`null`: every group of the tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step_seconds: i64,
    /// The whole resource.
    points: Vec<Point>,
    /// Its parts: a route configuration's virtual hosts and routes, a listener's connection
    /// managers.
    parts: Vec<Part>,
    /// What Envoy does not count, and why a series may be partial.
    notes: Vec<String>,
}

impl Metrics {
    /// The answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        (kind, name, group): (&str, &str, Option<&str>),
        (from, to, step): (DateTime<Utc>, DateTime<Utc>, i64),
        points: Vec<Point>,
        parts: Vec<Part>,
        notes: Vec<String>,
    ) -> Self {
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            group: group.map(str::to_owned),
            from,
            to,
            step_seconds: step,
            points,
            parts,
            notes,
        }
    }
}
