//! Prometheus metrics (NFR-OB-001), served as text at `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: String,
    /// The route template (`/api/v1/tenants/{slug}`), never the raw path, to bound cardinality.
    pub route: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a command metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CommandLabels {
    /// Aggregate type.
    pub aggregate: String,
    /// `committed`, `unchanged`, `rejected`, `conflict` or `failed`.
    pub outcome: String,
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram>,
    /// Commands executed, by aggregate and outcome.
    pub commands: Family<CommandLabels, Counter>,
    /// The tenants projection's checkpoint (global position of the last projected event).
    pub projector_position: Gauge,
    /// The xDS server's metrics.
    pub xds: efms_xds::XdsMetrics,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("efms");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_duration.clone(),
        );
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register("commands", "Commands executed", commands.clone());
        let projector_position = Gauge::default();
        registry.register(
            "projector_global_position",
            "Global position of the last event the read models reflect",
            projector_position.clone(),
        );
        let xds = efms_xds::XdsMetrics::register(&mut registry);
        Arc::new(Self {
            registry,
            http_requests,
            http_duration,
            commands,
            projector_position,
            xds,
        })
    }

    /// Counts one command outcome.
    pub fn command(&self, aggregate: &str, outcome: &str) {
        self.commands
            .get_or_create(&CommandLabels {
                aggregate: aggregate.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Middleware that counts and times every request by route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
