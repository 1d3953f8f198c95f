//! Prometheus metrics (NFR-OB-001), served as text at `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
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
    /// HTTP method: one of the standard ones, or `other` (see [`method_label`]).
    pub method: &'static str,
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

/// Labels of the fleet's VM gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VmLabels {
    /// `down`, `ready`, `docker_unreachable` or `removed`.
    pub state: String,
}

/// Labels of the fleet's container gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ContainerLabels {
    /// The container's state.
    pub state: String,
    /// Its health.
    pub health: String,
}

/// Labels of the live event readers' counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReaderLabels {
    /// `websocket` or `sse`.
    pub transport: &'static str,
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
    /// Requests the audit trail should have recorded but could not (the database refused).
    pub audit_failures: Counter,
    /// Anonymous refusals left out of the audit trail by its rate limit.
    pub audit_unrecorded_anonymous: Counter,
    /// Connections closed at once because the HTTP listener had as many as it may.
    pub http_connections_refused: Counter,
    /// VMs by state, across tenants (read at each scrape).
    pub fleet_vms: Family<VmLabels, Gauge>,
    /// Containers not gone, by state and health, across tenants (read at each scrape).
    pub fleet_containers: Family<ContainerLabels, Gauge>,
    /// Live event readers cut for being too slow, by transport.
    pub event_readers_cut: Family<ReaderLabels, Counter>,
    /// Reads the read replica served.
    pub replica_reads: Counter,
    /// Reads left to the primary while a replica is set: it was behind, or did not answer.
    pub replica_fallbacks: Counter,
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
        let audit_failures = Counter::default();
        registry.register(
            "audit_insert_failures",
            "Requests that could not be recorded in the audit trail (answered all the same)",
            audit_failures.clone(),
        );
        let audit_unrecorded_anonymous = Counter::default();
        registry.register(
            "audit_anonymous_refusals_unrecorded",
            "Anonymous refused requests left out of the audit trail by its rate limit",
            audit_unrecorded_anonymous.clone(),
        );
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because the listener had its maximum",
            http_connections_refused.clone(),
        );
        let fleet_vms = Family::<VmLabels, Gauge>::default();
        registry.register("fleet_vms", "VMs by state", fleet_vms.clone());
        let fleet_containers = Family::<ContainerLabels, Gauge>::default();
        registry.register(
            "fleet_containers",
            "Envoy containers on the VMs, by state and health (gone ones left out)",
            fleet_containers.clone(),
        );
        let event_readers_cut = Family::<ReaderLabels, Counter>::default();
        registry.register(
            "event_readers_cut",
            "Live event readers (WebSocket, Server-Sent Events) cut for taking an event too slowly",
            event_readers_cut.clone(),
        );
        let replica_reads = Counter::default();
        registry.register(
            "read_replica_reads",
            "Reads served by the read replica (EFMS_DATABASE_READ_URL)",
            replica_reads.clone(),
        );
        let replica_fallbacks = Counter::default();
        registry.register(
            "read_replica_fallbacks",
            "Reads served by the primary because the read replica was behind or did not answer",
            replica_fallbacks.clone(),
        );
        Arc::new(Self {
            registry,
            http_requests,
            http_duration,
            commands,
            projector_position,
            xds,
            audit_failures,
            audit_unrecorded_anonymous,
            http_connections_refused,
            fleet_vms,
            fleet_containers,
            event_readers_cut,
            replica_reads,
            replica_fallbacks,
        })
    }

    /// Counts a live event reader of `transport` cut for being too slow.
    pub fn event_reader_cut(&self, transport: &'static str) {
        self.event_readers_cut
            .get_or_create(&ReaderLabels { transport })
            .inc();
    }

    /// Sets the fleet's gauges to `counts`.
    pub fn set_fleet(&self, counts: &efms_projections::fleet::queries::FleetCounts) {
        self.fleet_vms.clear();
        for (state, count) in &counts.vms {
            self.fleet_vms
                .get_or_create(&VmLabels {
                    state: state.clone(),
                })
                .set(*count);
        }
        self.fleet_containers.clear();
        for (state, health, count) in &counts.containers {
            self.fleet_containers
                .get_or_create(&ContainerLabels {
                    state: state.clone(),
                    health: health.clone(),
                })
                .set(*count);
        }
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

/// The label of an HTTP method: a standard method by its name, anything else as `other`, so that
/// made-up methods cannot add series.
pub fn method_label(method: &Method) -> &'static str {
    [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ]
    .into_iter()
    .find_map(|(known, label)| (known == method).then_some(label))
    .unwrap_or("other")
}

/// Middleware that counts and times every request by route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
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
