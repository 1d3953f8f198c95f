//! `efms-stats-load`: a load generator standing for a fleet of proxies streaming their statistics
//! (issue acceptance: 1,000 proxies of 300 statistics every 10 s).
//!
//! It creates a tenant and its groups through the API, then opens one
//! `envoy.service.metrics.v3.MetricsService/StreamMetrics` stream per proxy, as Envoy's metrics
//! service sink does (its node in the first message), and sends every proxy's statistics every
//! interval, spread over the interval: per cluster the counters of requests, responses by class,
//! retries, connections and bytes (as deltas), the latency histogram of the interval, and the
//! gauges of connections, circuit breakers and endpoints. It measures the CPU the control plane
//! and Postgres spent over the first half of the run (the streams' load alone), the rows and bytes
//! the statistics tables grew by, and, in the second half, the p50/p99 of a cluster's series and a
//! group's health while the load runs.
//!
//! ```text
//! efms-stats-load --token "$(efms token --role system)" --proxies 1000 --clusters 20 \
//!     --seconds 120 --server-pid "$(pgrep -f 'efms serve')"
//! ```

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use efms_tests::measure::{cpu_seconds_of_all, percentile, process_usage, table_sizes, timed_gets};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue};
use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "efms-stats-load",
    about = "Stands for proxies streaming their statistics and measures the cost"
)]
struct Args {
    /// The gRPC listener.
    #[arg(long, default_value = "127.0.0.1:18000")]
    grpc: String,
    /// The HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// A `system` token (it creates the tenant and its groups, and streams for every proxy).
    #[arg(long, env = "EFMS_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant to create.
    #[arg(long, default_value = "stats")]
    tenant: String,
    /// Proxies.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Groups the proxies are spread over.
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Clusters per proxy (15 statistics each: 20 clusters make 300).
    #[arg(long, default_value_t = 20)]
    clusters: usize,
    /// The flush interval, in seconds.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// How long the measured run lasts, in seconds (after every proxy connected).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// The control plane's pid, to measure its CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Postgres's URL, to measure what the statistics tables grew by.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database: String,
}

fn text(value: &str) -> ProtoValue {
    ProtoValue {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

fn node(args: &Args, proxy: usize) -> Node {
    Node {
        id: format!("proxy-{proxy}"),
        cluster: format!("g-{}", proxy % args.groups),
        metadata: Some(Struct {
            fields: [
                ("tenant".to_owned(), text(&args.tenant)),
                (
                    "group".to_owned(),
                    text(&format!("g-{}", proxy % args.groups)),
                ),
            ]
            .into_iter()
            .collect(),
        }),
        ..Node::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| LabelPair {
            name: Some((*name).to_owned()),
            value: Some((*value).to_owned()),
        })
        .collect()
}

fn counter(name: &str, label: Vec<LabelPair>, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_owned()),
        metric: vec![Metric {
            label,
            counter: Some(Counter {
                value: Some(value),
                ..Counter::default()
            }),
            ..Metric::default()
        }],
        ..MetricFamily::default()
    }
}

fn gauge(name: &str, label: Vec<LabelPair>, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_owned()),
        metric: vec![Metric {
            label,
            gauge: Some(Gauge { value: Some(value) }),
            ..Metric::default()
        }],
        ..MetricFamily::default()
    }
}

/// One proxy's statistics of one interval: 15 per cluster.
fn statistics(args: &Args, round: u64) -> Vec<MetricFamily> {
    let bounds = [
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0,
    ];
    let mut families = Vec::with_capacity(args.clusters * 15);
    for cluster in 0..args.clusters {
        let name = format!("c-{cluster}");
        let of = || labels(&[("envoy.cluster_name", &name)]);
        #[allow(clippy::cast_precision_loss)]
        let requests = (100 + round % 7) as f64;
        for (stat, value) in [
            ("cluster.upstream_rq_total", requests),
            ("cluster.upstream_rq_retry", 1.0),
            ("cluster.upstream_cx_total", 3.0),
            ("cluster.upstream_cx_rx_bytes_total", requests * 900.0),
            ("cluster.upstream_cx_tx_bytes_total", requests * 300.0),
        ] {
            families.push(counter(stat, of(), value));
        }
        for (class, value) in [("2", requests - 2.0), ("5", 2.0)] {
            families.push(counter(
                "cluster.upstream_rq_xx",
                labels(&[
                    ("envoy.response_code_class", class),
                    ("envoy.cluster_name", &name),
                ]),
                value,
            ));
        }
        families.push(MetricFamily {
            name: Some("cluster.upstream_rq_time".to_owned()),
            metric: vec![Metric {
                label: of(),
                histogram: Some(Histogram {
                    sample_count: Some(100),
                    sample_sum: Some(900.0),
                    bucket: bounds
                        .iter()
                        .enumerate()
                        .map(|(index, bound)| Bucket {
                            cumulative_count: Some(if index < 2 {
                                0
                            } else {
                                100.min(60 + 10 * index as u64)
                            }),
                            upper_bound: Some(*bound),
                            ..Bucket::default()
                        })
                        .collect(),
                    ..Histogram::default()
                }),
                ..Metric::default()
            }],
            ..MetricFamily::default()
        });
        for (stat, value) in [
            ("cluster.upstream_cx_active", 4.0),
            ("cluster.circuit_breakers.default.cx_open", 0.0),
            ("cluster.circuit_breakers.default.rq_open", 0.0),
            ("cluster.circuit_breakers.default.rq_pending_open", 0.0),
            ("cluster.circuit_breakers.default.rq_retry_open", 0.0),
            ("cluster.membership_healthy", 3.0),
            ("cluster.membership_total", 3.0),
        ] {
            families.push(gauge(stat, of(), value));
        }
    }
    families
}

/// One proxy: its stream, a message every interval from `offset` on.
async fn proxy(
    args: Arc<Args>,
    index: usize,
    channel: tonic::transport::Channel,
    offset: Duration,
    sent: Arc<AtomicU64>,
) {
    let (tx, rx) = mpsc::channel(4);
    let mut client = MetricsServiceClient::new(channel);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", args.token)
            .parse()
            .expect("a token is ASCII"),
    );
    let call = tokio::spawn(async move { client.stream_metrics(request).await });
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(Duration::from_secs(args.interval));
    let mut identifier = Some(Identifier {
        node: Some(node(&args, index)),
    });
    for round in 0.. {
        ticker.tick().await;
        let message = StreamMetricsMessage {
            identifier: identifier.take(),
            envoy_metrics: statistics(&args, round),
        };
        if tx.send(message).await.is_err() {
            eprintln!("proxy {index}: stream ended: {:?}", call.await);
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// CPU seconds of the control plane and of Postgres now.
fn cpu(args: &Args) -> (f64, f64) {
    (
        args.server_pid
            .and_then(process_usage)
            .map_or(0.0, |(_, cpu)| cpu),
        cpu_seconds_of_all("postgres"),
    )
}

async fn rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM proxy_stats")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Prints the p50 and p99 of each read.
fn print_reads(reads: &[(&str, &Vec<Duration>)]) {
    for (what, times) in reads {
        println!(
            "{what} under load: p50 {:.1} ms, p99 {:.1} ms ({} answered)",
            percentile(times, 0.5).as_secs_f64() * 1000.0,
            percentile(times, 0.99).as_secs_f64() * 1000.0,
            times.len()
        );
    }
}

/// Creates the tenant and its groups.
async fn create_tenant(
    client: &reqwest::Client,
    args: &Args,
    base: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    client
        .post(format!("{}/api/v1/tenants", args.http))
        .bearer_auth(&args.token)
        .json(&json!({ "slug": args.tenant, "name": "Statistics load" }))
        .send()
        .await?;
    for group in 0..args.groups {
        client
            .post(format!("{base}/groups"))
            .bearer_auth(&args.token)
            .json(&json!({ "name": format!("g-{group}") }))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Arc::new(Args::parse());
    let client = reqwest::Client::new();
    let base = format!("{}/api/v1/tenants/{}", args.http, args.tenant);
    create_tenant(&client, &args, &base).await?;
    let pool = sqlx::PgPool::connect(&args.database).await?;
    let channels: Vec<_> = (0..20)
        .map(|_| {
            Endpoint::from_shared(format!("http://{}", args.grpc))
                .expect("a gRPC address")
                .connect_lazy()
        })
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let spread = Duration::from_secs(args.interval);
    let count = u32::try_from(args.proxies).unwrap_or(u32::MAX).max(1);
    let proxies: Vec<_> = (0..args.proxies)
        .map(|index| {
            let offset = spread * u32::try_from(index).unwrap_or(u32::MAX) / count;
            tokio::spawn(proxy(
                args.clone(),
                index,
                channels[index % channels.len()].clone(),
                offset,
                sent.clone(),
            ))
        })
        .collect();
    // Let every proxy connect and send, and the first buckets be written, then measure.
    tokio::time::sleep(Duration::from_secs(args.interval * 2 + 5)).await;
    let tables = ["proxy_stats", "proxy_stats_1m"];
    let (rows_before, sizes_before) = (rows(&pool).await, table_sizes(&pool, &tables).await);
    let (server_before, postgres_before) = cpu(&args);
    let sent_before = sent.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds / 2)).await;
    let half = window.elapsed().as_secs_f64();
    let (server_half, postgres_half) = cpu(&args);
    let series = timed_gets(
        &client,
        &format!("{base}/metrics/clusters/c-0?group=g-0&step=10"),
        &args.token,
        100,
    )
    .await;
    let health = timed_gets(
        &client,
        &format!("{base}/groups/g-0/health"),
        &args.token,
        100,
    )
    .await;
    let remaining = Duration::from_secs(args.seconds).saturating_sub(window.elapsed());
    tokio::time::sleep(remaining).await;
    let elapsed = window.elapsed().as_secs_f64();
    let sent_after = sent.load(Ordering::Relaxed);
    let (rows_after, sizes_after) = (rows(&pool).await, table_sizes(&pool, &tables).await);
    #[allow(clippy::cast_precision_loss)]
    let per_hour = |delta: i64| delta as f64 * 3600.0 / elapsed;
    println!(
        "{} proxies in {} groups, {} statistics each every {} s, measured over {elapsed:.0} s",
        args.proxies,
        args.groups,
        args.clusters * 15,
        args.interval
    );
    #[allow(clippy::cast_precision_loss)]
    let rate = (sent_after - sent_before) as f64 / elapsed;
    println!("messages sent: {rate:.0}/s");
    println!(
        "control plane CPU, the streams' load alone (first half): {:.1} % of one core",
        (server_half - server_before) / half * 100.0
    );
    println!(
        "Postgres CPU (all its processes), the streams' load alone: {:.1} % of one core",
        (postgres_half - postgres_before) / half * 100.0
    );
    println!(
        "rows written per hour: {:.0}",
        per_hour(rows_after - rows_before)
    );
    for table in tables {
        let grown = sizes_after[table] - sizes_before[table];
        println!("{table}: {:.1} MiB per hour", per_hour(grown) / 1_048_576.0);
    }
    print_reads(&[
        (
            "GET /metrics/clusters/c-0?group=g-0&step=10 (last hour)",
            &series,
        ),
        ("GET /groups/g-0/health", &health),
    ]);
    for proxy in proxies {
        proxy.abort();
    }
    Ok(())
}
