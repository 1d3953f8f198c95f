//! `efms-fleet-load`: a load generator standing for a fleet of agents (issue acceptance: 1,000
//! agents of 20 containers each).
//!
//! It registers N VMs through the API, opens one fleet stream per VM as `efms agent` does (Hello
//! with the host's facts, a snapshot of its containers), then, for the run's length, sends every
//! agent's heartbeat with utilisation and its containers' usage every interval, and one lifecycle
//! event per container per minute (health checks flipping). It measures the CPU the control plane
//! and Postgres spent (given the control plane's pid) over the first half of the run, the agents'
//! load alone, and over the whole run; what the database grew by, reports acknowledged per second,
//! and, in the second half, the p50/p99 of `GET /vms` and `GET /containers?state=running` while
//! the load runs.
//!
//! ```text
//! efms-fleet-load --token "$(efms token --role system)" --agents 1000 --containers 20 \
//!     --seconds 120 --server-pid "$(pgrep -f 'efms serve')"
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use efms_fleet_proto::{
    agent_message::Body, AgentMessage, Container, ContainerEvent, ContainerSnapshot,
    ContainerState, ContainerUsage, ContainerUsages, EngineVersion, EventKind, Health, Heartbeat,
    Hello, HostFacts, HostUsage,
};
use efms_tests::measure::{cpu_seconds_of_all, percentile, process_usage, table_sizes, timed_gets};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "efms-fleet-load",
    about = "Stands for a fleet of agents and measures the cost"
)]
struct Args {
    /// The gRPC listener.
    #[arg(long, default_value = "127.0.0.1:18000")]
    grpc: String,
    /// The HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// A `system` token (it creates the tenant and registers the VMs).
    #[arg(long, env = "EFMS_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant to create.
    #[arg(long, default_value = "fleet")]
    tenant: String,
    /// Agents (VMs).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Containers per agent.
    #[arg(long, default_value_t = 20)]
    containers: usize,
    /// The heartbeat interval, in seconds.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// How long the measured run lasts, in seconds (after every agent connected).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// The control plane's pid, to measure its CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Postgres's URL, to measure what the database grew by.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database: String,
}

fn container_id(agent: usize, container: usize) -> String {
    format!("{:032x}{:032x}", agent + 1, container + 1)
}

fn facts(agent: usize) -> HostFacts {
    HostFacts {
        hostname: format!("host-{agent}"),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        architecture: "x86_64".into(),
        cpu_count: 8,
        memory_bytes: 32 << 30,
        docker: Some(EngineVersion {
            version: "20.10.24".into(),
            api_version: "1.41".into(),
            negotiated_api_version: "1.41".into(),
        }),
        agent_version: "0.1.0".into(),
        ..HostFacts::default()
    }
}

fn containers(agent: usize, count: usize) -> Vec<Container> {
    (0..count)
        .map(|c| Container {
            id: container_id(agent, c),
            name: format!("envoy-{c}"),
            image: "envoyproxy/envoy:v1.40.0".into(),
            image_id: "sha256:0".into(),
            node_id: Some(format!("vm-{agent}-edge-{c}")),
            state: ContainerState::Running.into(),
            health: Health::Healthy.into(),
            labels: HashMap::from([("efms.node_id".to_owned(), format!("vm-{agent}-edge-{c}"))]),
            ..Container::default()
        })
        .collect()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A heartbeat with utilisation, and the containers' usage.
fn heartbeat_bodies(index: usize, containers: usize) -> (Body, Body) {
    let usage = HostUsage {
        cpu_percent: 12.5,
        load_1m: 0.5,
        load_5m: 0.4,
        load_15m: 0.3,
        memory_used_bytes: 4 << 30,
        memory_total_bytes: 32 << 30,
        network_rx_bytes_per_second: 1e6,
        network_tx_bytes_per_second: 1e6,
        ..HostUsage::default()
    };
    let beat = Body::Heartbeat(Heartbeat {
        sampled_at: now_ms(),
        usage: Some(usage),
        engine_reachable: true,
        engine_error: String::new(),
    });
    let usages = (0..containers)
        .map(|c| ContainerUsage {
            container_id: container_id(index, c),
            cpu_percent: 3.0,
            memory_used_bytes: 64 << 20,
            memory_limit_bytes: Some(256 << 20),
            pids: Some(12),
        })
        .collect();
    (
        beat,
        Body::Usage(ContainerUsages {
            sampled_at: now_ms(),
            containers: usages,
        }),
    )
}

/// One agent's stream for the run's length; counts what was acknowledged.
async fn agent(
    args: Arc<Args>,
    index: usize,
    token: String,
    started: Instant,
    acked: Arc<AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = Endpoint::from_shared(format!("http://{}", args.grpc))?
        .connect()
        .await?;
    let (sender, receiver) = mpsc::channel(64);
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    sender
        .send(AgentMessage {
            seq: 0,
            body: Some(Body::Hello(Hello {
                epoch: format!("load-{index}"),
                facts: Some(facts(index)),
                ..Hello::default()
            })),
        })
        .await?;
    let mut answers = efms_fleet_proto::connect(channel, request).await?;
    answers.message().await?;
    let counter = acked.clone();
    tokio::spawn(async move {
        while let Ok(Some(_)) = answers.message().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut seq = 1;
    let mut send = |body: Body| {
        let message = AgentMessage {
            seq,
            body: Some(body),
        };
        seq += 1;
        message
    };
    sender
        .send(send(Body::Snapshot(ContainerSnapshot {
            containers: containers(index, args.containers),
        })))
        .await?;
    // Spread the agents over the interval, as real ones are.
    let interval = Duration::from_secs(args.interval);
    let offset = interval * u32::try_from(index)? / u32::try_from(args.agents.max(1))?;
    tokio::time::sleep(offset).await;
    let every_event = Duration::from_secs(60) / u32::try_from(args.containers.max(1))?;
    let mut heartbeat = tokio::time::interval(interval);
    let mut event = tokio::time::interval(every_event);
    let mut flips = 0_usize;
    let end = started + Duration::from_secs(args.seconds) + interval;
    while Instant::now() < end {
        tokio::select! {
            _ = heartbeat.tick() => {
                let (beat, usage) = heartbeat_bodies(index, args.containers);
                sender.send(send(beat)).await?;
                sender.send(send(usage)).await?;
            }
            _ = event.tick() => {
                let c = flips % args.containers.max(1);
                let health = if (flips / args.containers.max(1)).is_multiple_of(2) {
                    Health::Unhealthy
                } else {
                    Health::Healthy
                };
                flips += 1;
                sender.send(send(Body::Event(ContainerEvent {
                    container_id: container_id(index, c),
                    name: format!("envoy-{c}"),
                    image: "envoyproxy/envoy:v1.40.0".into(),
                    kind: EventKind::HealthStatus.into(),
                    health: health.into(),
                    time_nanos: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(1),
                    ..ContainerEvent::default()
                }))).await?;
            }
        }
    }
    Ok(())
}

/// Sizes of the tables the fleet writes, in bytes, and the log's rows.
async fn database_figures(pool: &sqlx::PgPool) -> (i64, HashMap<String, i64>) {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    let tables = [
        "events",
        "audit_log",
        "container_history",
        "containers",
        "vm_presence",
        "vm_samples",
        "container_samples",
    ];
    (events, table_sizes(pool, &tables).await)
}

/// Registers the VMs, 16 at a time; their join tokens.
async fn register_all(
    client: &reqwest::Client,
    args: &Args,
    base: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let limit = Arc::new(Semaphore::new(16));
    let mut registrations = Vec::new();
    for index in 0..args.agents {
        let (client, base, token, limit) = (
            client.clone(),
            base.to_owned(),
            args.token.clone(),
            limit.clone(),
        );
        registrations.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.ok()?;
            let answer = client
                .post(format!("{base}/vms"))
                .bearer_auth(token)
                .json(&json!({ "name": format!("vm-{index}") }))
                .send()
                .await
                .ok()?;
            let body: serde_json::Value = answer.json().await.ok()?;
            body["join_token"].as_str().map(str::to_owned)
        }));
    }
    let mut tokens = Vec::new();
    for registration in registrations {
        tokens.push(registration.await?.ok_or("a VM could not be registered")?);
    }
    Ok(tokens)
}

/// CPU seconds spent so far by the control plane (with its RSS) and by Postgres.
struct Cpu {
    server: Option<(u64, f64)>,
    postgres: f64,
}

impl Cpu {
    fn now(args: &Args) -> Self {
        Self {
            server: args.server_pid.and_then(process_usage),
            postgres: cpu_seconds_of_all("postgres"),
        }
    }

    /// Prints the CPU spent from `self` to `later`, `seconds` apart, as shares of one core.
    fn print_until(&self, later: &Self, seconds: f64, over: &str) {
        if let (Some((_, before)), Some((rss, after))) = (self.server, later.server) {
            println!(
                "control plane CPU, {over}: {:.1} % of one core; RSS {} MiB",
                (after - before) / seconds * 100.0,
                rss / 1024
            );
        }
        println!(
            "Postgres CPU (all its processes), {over}: {:.1} % of one core",
            (later.postgres - self.postgres) / seconds * 100.0
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Arc::new(Args::parse());
    let client = reqwest::Client::new();
    let base = format!("{}/api/v1/tenants/{}", args.http, args.tenant);
    client
        .post(format!("{}/api/v1/tenants", args.http))
        .bearer_auth(&args.token)
        .json(&json!({ "slug": args.tenant, "name": "Fleet load" }))
        .send()
        .await?;
    let tokens = register_all(&client, &args, &base).await?;
    eprintln!("{} VMs registered", tokens.len());
    let pool = sqlx::PgPool::connect(&args.database).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut agents = Vec::new();
    for (index, token) in tokens.into_iter().enumerate() {
        agents.push(tokio::spawn(agent(
            args.clone(),
            index,
            token,
            started,
            acked.clone(),
        )));
    }
    // Let every agent connect and send its first snapshot, then measure.
    tokio::time::sleep(Duration::from_secs(args.interval + 5)).await;
    let (events_before, sizes_before) = database_figures(&pool).await;
    let cpu_before = Cpu::now(&args);
    let acked_before = acked.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds / 2)).await;
    // The first half measures the agents' load alone; the reads below run in the second.
    let load_alone = window.elapsed().as_secs_f64();
    let cpu_half = Cpu::now(&args);
    let vms = timed_gets(
        &client,
        &format!(
            "{}/api/v1/tenants/{}/vms?limit=1000",
            args.http, args.tenant
        ),
        &args.token,
        100,
    )
    .await;
    let running = timed_gets(
        &client,
        &format!(
            "{}/api/v1/tenants/{}/containers?state=running&limit=1000",
            args.http, args.tenant
        ),
        &args.token,
        100,
    )
    .await;
    let remaining = Duration::from_secs(args.seconds).saturating_sub(window.elapsed());
    tokio::time::sleep(remaining).await;
    let elapsed = window.elapsed().as_secs_f64();
    let acked_after = acked.load(Ordering::Relaxed);
    let cpu_after = Cpu::now(&args);
    let (events_after, sizes_after) = database_figures(&pool).await;
    #[allow(clippy::cast_precision_loss)]
    let per_hour = |delta: i64| delta as f64 * 3600.0 / elapsed;
    println!(
        "{} agents x {} containers, heartbeat every {} s, one event per container per minute, measured over {elapsed:.0} s",
        args.agents, args.containers, args.interval
    );
    #[allow(clippy::cast_precision_loss)]
    let acked_rate = (acked_after - acked_before) as f64 / elapsed;
    println!("reports acknowledged: {acked_rate:.0}/s");
    cpu_before.print_until(&cpu_half, load_alone, "the agents' load alone (first half)");
    cpu_before.print_until(&cpu_after, elapsed, "the whole run, with the reads below");
    println!(
        "log rows per hour: {:.0}",
        per_hour(events_after - events_before)
    );
    let mut tables: Vec<_> = sizes_after.keys().cloned().collect();
    tables.sort();
    for table in tables {
        let grown = sizes_after[&table] - sizes_before.get(&table).copied().unwrap_or(0);
        println!("{table}: {:.1} MiB per hour", per_hour(grown) / 1_048_576.0);
    }
    for (what, times) in [
        ("GET /vms?limit=1000", &vms),
        ("GET /containers?state=running&limit=1000", &running),
    ] {
        println!(
            "{what} under load: p50 {:.1} ms, p99 {:.1} ms ({} answered)",
            percentile(times, 0.5).as_secs_f64() * 1000.0,
            percentile(times, 0.99).as_secs_f64() * 1000.0,
            times.len()
        );
    }
    for agent in agents {
        agent.abort();
    }
    Ok(())
}
