//! `efms-xds-load`: a load generator for the xDS server (NFR-PF-002).
//!
//! It opens N ADS streams (State of the World or delta) that behave as Envoy does: each subscribes
//! to clusters and listeners (wildcard) and to one route configuration by name, and acknowledges
//! every response (or refuses it, for every `--nack-every`-th stream). Then it commits changes to
//! that route configuration through the HTTP API and measures, per change, the time from sending
//! the commit to each stream having the new version and acknowledging it; and, given the control
//! plane's pid, its resident memory and CPU time.
//!
//! ```text
//! efms-xds-load --token "$(efms token --role operator --tenant acme)" --streams 1000 \
//!     --protocol delta --server-pid "$(pgrep -f 'efms serve')"
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use efms_tests::measure::{percentile, process_usage};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "efms-xds-load",
    about = "Opens N Envoy-like ADS streams and times configuration pushes"
)]
struct Args {
    /// The xDS server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    grpc: String,
    /// The HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// An `operator` (or `admin`) token of the tenant: it writes the configuration and opens the
    /// streams.
    #[arg(long, env = "EFMS_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant.
    #[arg(long, default_value = "acme")]
    tenant: String,
    /// The group every stream's node belongs to.
    #[arg(long, default_value = "load")]
    group: String,
    /// How many streams.
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// `sotw` or `delta`.
    #[arg(long, default_value = "sotw")]
    protocol: String,
    /// HTTP/2 connections to spread the streams over; 0: one per stream, as real proxies.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Changes to commit and time.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Every this-many-th stream refuses route configurations (0: none does).
    #[arg(long, default_value_t = 0)]
    nack_every: usize,
    /// The control plane's pid, to report its memory and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait for every stream to get a change.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Clusters to add to the tenant before the streams open (by bulks of 10,000), so that
    /// pushes are timed in a tenant of that size.
    #[arg(long, default_value_t = 0)]
    fill: usize,
    /// Of those clusters, how many the streams' group attaches (each stream gets them all).
    #[arg(long, default_value_t = 0)]
    attach: usize,
}

/// Responses received (and answered) by every stream so far, of any type.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// A route configuration update seen by a stream.
struct Seen {
    stream: usize,
    at: Instant,
}

fn node(args: &Args, index: usize) -> Node {
    let text = |value: &str| ProtoValue {
        kind: Some(Kind::StringValue(value.to_owned())),
    };
    Node {
        id: format!("load-{index}"),
        cluster: args.group.clone(),
        metadata: Some(Struct {
            fields: [
                ("tenant".to_owned(), text(&args.tenant)),
                ("group".to_owned(), text(&args.group)),
            ]
            .into(),
        }),
        ..Node::default()
    }
}

fn route(default_cluster: &str) -> serde_json::Value {
    json!({ "name": "load_routes", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": default_cluster } }] }] })
}

/// Writes the configuration the streams get: two clusters, a route configuration, a listener and
/// the group.
async fn setup(args: &Args, http: &reqwest::Client) -> anyhow::Result<()> {
    let cluster = |name: &str, port: u16| {
        json!({ "name": name, "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
            "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] } })
    };
    let listener = json!({ "name": "load_http",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 10_080 } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "load", "rds": { "route_config_name": "load_routes",
                    "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] });
    fill(args, http).await?;
    let mut resources = vec![json!({ "kind": "listener", "name": "load_http" })];
    resources.extend(
        (0..args.attach.min(args.fill))
            .map(|i| json!({ "kind": "cluster", "name": format!("fill_{i}") })),
    );
    let group = json!({ "name": args.group, "resources": resources });
    for (collection, name, body) in [
        ("clusters", "load_a", cluster("load_a", 10_081)),
        ("clusters", "load_b", cluster("load_b", 10_082)),
        ("routes", "load_routes", route("load_a")),
        ("listeners", "load_http", listener),
        ("groups", args.group.as_str(), group),
    ] {
        put(args, http, collection, name, &body).await?;
    }
    Ok(())
}

/// Adds `args.fill` clusters `fill_0`… to the tenant by bulks of 10,000 (each a job, waited
/// for).
async fn fill(args: &Args, http: &reqwest::Client) -> anyhow::Result<()> {
    const CHUNK: usize = 10_000;
    let base = format!("{}/api/v1/tenants/{}", args.http, args.tenant);
    for start in (0..args.fill).step_by(CHUNK) {
        let operations: Vec<serde_json::Value> = (start..args.fill.min(start + CHUNK))
            .map(|i| {
                let name = format!("fill_{i}");
                json!({ "op": "create", "kind": "clusters", "resource": {
                    "name": name, "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
                        "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                            "address": { "socket_address": { "address": "127.0.0.1",
                                "port_value": 20_000 + i % 10_000 } } } }] }] } } })
            })
            .collect();
        let response = http
            .post(format!("{base}/bulk"))
            .bearer_auth(&args.token)
            .json(&json!({ "message": "fill", "operations": operations }))
            .send()
            .await?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        anyhow::ensure!(
            status.is_success(),
            "bulk: {status} {}",
            response.text().await?
        );
        if let Some(location) = location {
            loop {
                let job: serde_json::Value = http
                    .get(format!("{}{location}", args.http))
                    .bearer_auth(&args.token)
                    .send()
                    .await?
                    .json()
                    .await?;
                if job["finished_at"].is_string() {
                    anyhow::ensure!(job["state"] == "succeeded", "bulk job: {job}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

async fn put(
    args: &Args,
    http: &reqwest::Client,
    collection: &str,
    name: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let response = http
        .put(format!(
            "{}/api/v1/tenants/{}/{collection}/{name}",
            args.http, args.tenant
        ))
        .bearer_auth(&args.token)
        .json(body)
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "PUT {collection}/{name}: {status} {}",
        response.text().await?
    );
    Ok(())
}

/// The outbound request stream of a stream, with the bearer token in its metadata.
fn authorized<T>(
    token: &str,
    outbound: mpsc::Receiver<T>,
) -> anyhow::Result<tonic::Request<ReceiverStream<T>>> {
    let mut request = tonic::Request::new(ReceiverStream::new(outbound));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// The `error_detail` of a NACK, when refusing.
fn refusal(refuse: bool) -> Option<RpcStatus> {
    refuse.then(|| RpcStatus {
        code: 3,
        message: "refused by the load generator".to_owned(),
        ..RpcStatus::default()
    })
}

/// One SotW stream: subscribe, then answer every response.
async fn sotw_stream(
    channel: Channel,
    token: String,
    node: Node,
    stream: usize,
    nack: bool,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (requests, outbound) = mpsc::channel::<DiscoveryRequest>(8);
    let first = |type_url: &str, names: Vec<String>, node: Option<Node>| DiscoveryRequest {
        node,
        type_url: type_url.to_owned(),
        resource_names: names,
        ..DiscoveryRequest::default()
    };
    requests.send(first(CDS, vec![], Some(node))).await?;
    requests.send(first(LDS, vec![], None)).await?;
    requests
        .send(first(RDS, vec!["load_routes".to_owned()], None))
        .await?;
    let request = authorized(&token, outbound)?;
    let mut responses = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    let mut accepted: HashMap<String, String> = HashMap::new();
    while let Some(response) = responses.message().await? {
        ANSWERED.fetch_add(1, Ordering::Relaxed);
        let is_route = response.type_url == RDS;
        let refuse = nack && is_route;
        if is_route {
            let _ = seen.send(Seen {
                stream,
                at: Instant::now(),
            });
        }
        if !refuse {
            accepted.insert(response.type_url.clone(), response.version_info.clone());
        }
        requests
            .send(DiscoveryRequest {
                version_info: accepted
                    .get(&response.type_url)
                    .cloned()
                    .unwrap_or_default(),
                resource_names: if is_route {
                    vec!["load_routes".to_owned()]
                } else {
                    vec![]
                },
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail: refusal(refuse),
                ..DiscoveryRequest::default()
            })
            .await?;
    }
    Ok(())
}

/// One delta stream: subscribe, then answer every response.
async fn delta_stream(
    channel: Channel,
    token: String,
    node: Node,
    stream: usize,
    nack: bool,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (requests, outbound) = mpsc::channel::<DeltaDiscoveryRequest>(8);
    let first = |type_url: &str, names: Vec<String>, node: Option<Node>| DeltaDiscoveryRequest {
        node,
        type_url: type_url.to_owned(),
        resource_names_subscribe: names,
        ..DeltaDiscoveryRequest::default()
    };
    requests.send(first(CDS, vec![], Some(node))).await?;
    requests.send(first(LDS, vec![], None)).await?;
    requests
        .send(first(RDS, vec!["load_routes".to_owned()], None))
        .await?;
    let request = authorized(&token, outbound)?;
    let mut responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        ANSWERED.fetch_add(1, Ordering::Relaxed);
        let is_route = response.type_url == RDS;
        let refuse = nack && is_route;
        if is_route && !response.resources.is_empty() {
            let _ = seen.send(Seen {
                stream,
                at: Instant::now(),
            });
        }
        requests
            .send(DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail: refusal(refuse),
                ..DeltaDiscoveryRequest::default()
            })
            .await?;
    }
    Ok(())
}

/// Waits until every stream in `expected` reported a route update after `since`; returns each
/// stream's delay.
async fn collect(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    expected: usize,
    since: Instant,
    timeout: Duration,
) -> Vec<Duration> {
    let mut delays: HashMap<usize, Duration> = HashMap::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + timeout;
    while delays.len() < expected {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(event)) if event.at >= since => {
                delays.entry(event.stream).or_insert(event.at - since);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut delays: Vec<Duration> = delays.into_values().collect();
    delays.sort_unstable();
    delays
}

fn nacking(args: &Args, index: usize) -> bool {
    args.nack_every > 0 && index.is_multiple_of(args.nack_every)
}

/// Connects and starts every stream; they report route updates on the returned receiver.
async fn open_streams(
    args: &Args,
) -> anyhow::Result<(
    tokio::task::JoinSet<anyhow::Result<()>>,
    mpsc::UnboundedReceiver<Seen>,
)> {
    let connections = if args.connections == 0 {
        args.streams
    } else {
        args.connections
    };
    let endpoint = Endpoint::from_shared(format!("http://{}", args.grpc))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(256));
    let mut channels = Vec::with_capacity(connections);
    let mut opening = Vec::with_capacity(connections);
    for _ in 0..connections {
        let endpoint = endpoint.clone();
        let gate = gate.clone();
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            endpoint.connect().await
        }));
    }
    for opened in opening {
        channels.push(opened.await??);
    }
    let mut failures = tokio::task::JoinSet::new();
    for index in 0..args.streams {
        let channel = channels[index % connections].clone();
        let (token, node, seen) = (args.token.clone(), node(args, index), seen_tx.clone());
        let nack = nacking(args, index);
        if args.protocol == "sotw" {
            failures.spawn(sotw_stream(channel, token, node, index, nack, seen));
        } else {
            failures.spawn(delta_stream(channel, token, node, index, nack, seen));
        }
    }
    drop(seen_tx);
    Ok((failures, seen))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        matches!(args.protocol.as_str(), "sotw" | "delta"),
        "--protocol is sotw or delta"
    );
    let http = reqwest::Client::new();
    setup(&args, &http).await?;
    let before = args.server_pid.and_then(process_usage);
    let own_before = process_usage(std::process::id());

    let started = Instant::now();
    let (streams, mut seen) = open_streams(&args).await?;
    let timeout = Duration::from_secs(args.timeout);
    let initial = collect(&mut seen, args.streams, started, timeout).await;
    println!(
        "{} {} streams over {} connections: {} got their first route configuration in {:.2?} (p50 {:.2?})",
        args.streams,
        args.protocol,
        if args.connections == 0 { args.streams } else { args.connections },
        initial.len(),
        initial.last().copied().unwrap_or_default(),
        percentile(&initial, 0.5),
    );
    anyhow::ensure!(
        initial.len() == args.streams,
        "not every stream synced; see the server log"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = args.server_pid.and_then(process_usage);
    let answered_before = ANSWERED.load(Ordering::Relaxed);

    let acking = (0..args.streams).filter(|i| !nacking(&args, *i)).count();
    let mut all = Vec::new();
    let mut worst = Vec::new();
    for change in 0..args.changes {
        let cluster = if change % 2 == 0 { "load_b" } else { "load_a" };
        let since = Instant::now();
        put(&args, &http, "routes", "load_routes", &route(cluster)).await?;
        let delays = collect(&mut seen, args.streams, since, timeout).await;
        anyhow::ensure!(
            delays.len() >= acking,
            "change {change}: only {} of {} streams got it",
            delays.len(),
            args.streams
        );
        let last = delays.last().copied().unwrap_or_default();
        println!(
            "change {change}: every stream had it and answered after {last:.2?} (p50 {:.2?}, p99 {:.2?})",
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
        );
        worst.push(last);
        all.extend(delays);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    all.sort_unstable();
    worst.sort_unstable();
    let after = args.server_pid.and_then(process_usage);
    let answered = ANSWERED.load(Ordering::Relaxed) - answered_before;
    println!(
        "commit to stream answered, over {} changes x {} streams: p50 {:.2?}, p99 {:.2?}; commit to all answered: p50 {:.2?}, max {:.2?}",
        args.changes,
        args.streams,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&worst, 0.5),
        worst.last().copied().unwrap_or_default(),
    );
    if let (Some((rss0, cpu0)), Some((rss1, cpu1)), Some((_, cpu2))) = (before, held, after) {
        #[allow(clippy::cast_precision_loss)]
        let per_stream = (rss1.saturating_sub(rss0)) as f64 / args.streams as f64;
        println!(
            "control plane: RSS {} MiB before, {} MiB holding the streams ({per_stream:.1} KiB per stream); CPU {:.1} s to open and sync, {:.1} s for the changes",
            rss0 / 1024,
            rss1 / 1024,
            cpu1 - cpu0,
            cpu2 - cpu1,
        );
        #[allow(clippy::cast_precision_loss)]
        let per_push = (cpu2 - cpu1) * 1e6 / answered.max(1) as f64;
        println!(
            "control plane CPU per push-and-ACK: {per_push:.1} µs ({answered} responses received and answered during the changes)"
        );
    }
    if let (Some((_, cpu0)), Some((rss, cpu1))) = (own_before, process_usage(std::process::id())) {
        println!(
            "load generator: RSS {} MiB, CPU {:.1} s over the run (it shares the machine)",
            rss / 1024,
            cpu1 - cpu0
        );
    }
    let mut streams = streams;
    streams.abort_all();
    Ok(())
}
