//! Event store append benchmark: our repository beside postgres-es's `PostgresEventRepository`, in
//! the same run, against the same Postgres.
//!
//! For 1, 4 and 16 concurrent writers and commits of 1 and 10 events, each writer appends commits to
//! its own stream for a fixed time; the program prints commits/s and the p50/p99 latency of one
//! commit for both repositories and the ratio between them.
//!
//! `cargo bench -p efms-commands --bench event_store` (see docs/benchmarks.md). Settings:
//! `EFMS_BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/efms_bench`, dropped and
//! recreated), `EFMS_BENCH_SECONDS` per measurement (default 3), `EFMS_BENCH_WRITERS` (default
//! `1,4,16`), `EFMS_BENCH_EVENTS` (events per commit, default `1,10`) and `EFMS_BENCH_SETUP_SQL`
//! (SQL run on the benchmark database before measuring, for what-if measurements).

// Counts and durations become floating-point figures for printing; precision loss is irrelevant.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use efms_commands::{CommitBell, PgEventRepository};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool};
use uuid::Uuid;

/// The aggregate both repositories store events of; only its type name matters here.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Bench;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Benched;

impl DomainEvent for Benched {
    fn event_type(&self) -> String {
        "Benched".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Bench {
    const TYPE: &'static str = "bench";
    type Command = ();
    type Event = Benched;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, (): (), (): &(), _: &EventSink<Self>) -> Result<(), Never> {
        Ok(())
    }

    fn apply(&mut self, _: Benched) {}
}

/// A realistic event: a resource document of about 600 bytes, with an actor.
fn commit(stream: &str, first_sequence: usize, size: usize) -> Vec<SerializedEvent> {
    (0..size)
        .map(|i| SerializedEvent {
            aggregate_id: stream.to_owned(),
            sequence: first_sequence + i,
            aggregate_type: Bench::TYPE.to_owned(),
            event_type: "Benched".to_owned(),
            event_version: "1".to_owned(),
            payload: json!({
                "kind": "cluster",
                "name": format!("backend-{i}"),
                "document": {
                    "name": format!("backend-{i}"),
                    "connect_timeout": "1s",
                    "type": "EDS",
                    "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } },
                    "circuit_breakers": { "thresholds": [{ "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024 }] },
                    "lb_policy": "LEAST_REQUEST",
                    "health_checks": [{ "timeout": "1s", "interval": "5s", "unhealthy_threshold": 3, "healthy_threshold": 2, "http_health_check": { "path": "/healthz" } }]
                }
            }),
            metadata: json!({ "actor": "bench (operator)", "message": "benchmark commit" }),
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repo {
    Ours,
    PostgresEs,
}

struct Measurement {
    commits_per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Latencies of every commit and the time they took, summed over slices.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    fn measurement(mut self) -> Measurement {
        self.latencies.sort();
        let percentile = |p: f64| {
            let n = self.latencies.len();
            let index = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.latencies[index]
        };
        Measurement {
            commits_per_second: self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            p50: percentile(0.50),
            p99: percentile(0.99),
        }
    }
}

/// Measures both repositories in alternating slices (ours, theirs, theirs, ours, ...) so that a
/// drift of the machine (disk flushes, another process) weighs on both alike.
async fn compare(
    pool: &PgPool,
    writers: usize,
    size: usize,
    seconds: u64,
) -> (Measurement, Measurement) {
    const SLICES: u32 = 6;
    let slice = Duration::from_secs(seconds) / SLICES;
    let (mut ours, mut theirs) = (Samples::default(), Samples::default());
    for round in 0..SLICES {
        let order = if round % 2 == 0 {
            [Repo::Ours, Repo::PostgresEs]
        } else {
            [Repo::PostgresEs, Repo::Ours]
        };
        for repo in order {
            let samples = if repo == Repo::Ours {
                &mut ours
            } else {
                &mut theirs
            };
            let (latencies, elapsed) = measure(pool, repo, writers, size, slice).await;
            samples.latencies.extend(latencies);
            samples.elapsed += elapsed;
        }
    }
    (ours.measurement(), theirs.measurement())
}

/// Runs `writers` writers of one repository for `duration`; returns every commit's latency and
/// the time taken.
async fn measure(
    pool: &PgPool,
    repo: Repo,
    writers: usize,
    size: usize,
    duration: Duration,
) -> (Vec<Duration>, Duration) {
    // Ours rings the log readers' doorbell after each commit, as in production.
    let bell = CommitBell::spawn(pool);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let pool = pool.clone();
        let bell = bell.clone();
        tasks.push(tokio::spawn(async move {
            let stream = Uuid::new_v4().to_string();
            let ours = PgEventRepository::new(pool.clone(), Uuid::new_v4()).with_bell(bell);
            let theirs =
                PostgresEventRepository::new(pool).with_tables("pges_events", "pges_snapshots");
            let mut latencies = Vec::new();
            let mut sequence = 1;
            while Instant::now() < deadline {
                let events = commit(&stream, sequence, size);
                let began = Instant::now();
                let result = match repo {
                    Repo::Ours => ours.persist::<Bench>(&events, None).await,
                    Repo::PostgresEs => theirs.persist::<Bench>(&events, None).await,
                };
                result.expect("append");
                latencies.push(began.elapsed());
                sequence += size;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer"));
    }
    (latencies, started.elapsed())
}

async fn prepare(url: &str) -> PgPool {
    let (server, database) = url.rsplit_once('/').expect("a database URL ends in /NAME");
    let admin = PgPool::connect(&format!("{server}/postgres"))
        .await
        .expect("connect");
    admin
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await
        .expect("drop");
    admin
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await
        .expect("create");
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .expect("connect");
    efms_commands::MIGRATOR.run(&pool).await.expect("migrate");
    // postgres-es's schema, as its documentation gives it.
    pool.execute(
        "CREATE TABLE pges_events (
             aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint CHECK (sequence >= 0) NOT NULL,
             event_type text NOT NULL, event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
             PRIMARY KEY (aggregate_type, aggregate_id, sequence));
         CREATE TABLE pges_snapshots (
             aggregate_type text NOT NULL, aggregate_id text NOT NULL, last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
             current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
             PRIMARY KEY (aggregate_type, aggregate_id));",
    )
    .await
    .expect("postgres-es schema");
    if let Ok(sql) = std::env::var("EFMS_BENCH_SETUP_SQL") {
        // What-if measurements: change the schema before measuring (docs/benchmarks.md).
        pool.execute(sql.as_str())
            .await
            .expect("EFMS_BENCH_SETUP_SQL");
    }
    pool
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        // `cargo bench -- --list` and test discovery: nothing to list.
        return;
    }
    let url = std::env::var("EFMS_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/efms_bench".to_owned());
    let seconds = std::env::var("EFMS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let list = |name: &str, default: &str| -> Vec<usize> {
        std::env::var(name)
            .unwrap_or_else(|_| default.to_owned())
            .split(',')
            .map(|n| n.trim().parse().expect("a comma-separated list of numbers"))
            .collect()
    };
    let writer_counts = list("EFMS_BENCH_WRITERS", "1,4,16");
    let commit_sizes = list("EFMS_BENCH_EVENTS", "1,10");
    let pool = prepare(&url).await;
    // Warm-up: connections, prepared statements, caches.
    compare(&pool, 4, 10, 1).await;
    println!("event store append benchmark: {seconds} s per repository and row, in 6 alternating slices, pool of 20 connections");
    println!(
        "| writers | events/commit | ours commits/s | ours p50 ms | ours p99 ms | postgres-es commits/s | postgres-es p50 ms | postgres-es p99 ms | ours/postgres-es throughput |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &size in &commit_sizes {
        for &writers in &writer_counts {
            let (ours, theirs) = compare(&pool, writers, size, seconds).await;
            let ratio = ours.commits_per_second / theirs.commits_per_second;
            println!(
                "| {writers} | {size} | {:.0} | {} | {} | {:.0} | {} | {} | {ratio:.2}x |",
                ours.commits_per_second,
                ms(ours.p50),
                ms(ours.p99),
                theirs.commits_per_second,
                ms(theirs.p50),
                ms(theirs.p99),
            );
        }
    }
    pool.close().await;
}
