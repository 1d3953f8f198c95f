//! `efms-events-load`: the events-out benchmark (issue acceptance: 100 webhooks and 1,000
//! WebSocket clients subscribed, 50 commits/s for a minute).
//!
//! It creates a tenant, a webhook receiver of its own (one HTTP server, a path per webhook) and
//! the webhooks, opens the WebSocket clients (a share of them never read, standing for clients
//! too slow to keep up), then commits at the given rate and measures, from each commit's request
//! (its answer may come after the event) to its receipt, the latency of every WebSocket and webhook delivery (p50, p99, max), how many
//! arrived, and the control plane's CPU and resident memory (sampled each second: memory must
//! stay bounded whatever the clients' speed).
//!
//! ```text
//! efms-events-load --token "$(efms token --role system)" --webhooks 100 --sockets 1000 \
//!     --rate 50 --seconds 60 --server-pid "$(pgrep -f 'efms serve')"
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use clap::Parser;
use efms_tests::measure::{percentile, process_usage};
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "efms-events-load",
    about = "Commits at a rate with webhooks and WebSocket clients subscribed, and measures delivery"
)]
struct Args {
    /// The HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// A `system` token.
    #[arg(long, env = "EFMS_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant to create.
    #[arg(long, default_value = "events")]
    tenant: String,
    /// Webhooks subscribed to commits.
    #[arg(long, default_value_t = 100)]
    webhooks: usize,
    /// WebSocket clients.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Of the WebSocket clients, how many never read (too slow for the feed).
    #[arg(long, default_value_t = 50)]
    stalled: usize,
    /// Commits per second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// How long the commits go on, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The control plane's pid, to measure its CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// WebSocket clients cut by the server as too slow.
static CUT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// When each commit's answer came, by the cluster it created.
type Committed = Arc<Mutex<HashMap<String, Instant>>>;
/// Each delivery's latency.
type Latencies = Arc<Mutex<Vec<Duration>>>;

/// The name of the cluster a `commit` event (as the feed or a webhook shows it) created.
fn created(event: &Value) -> Option<String> {
    let payload = event.get("payload").or_else(|| event.get("data"))?;
    Some(payload["changes"][0]["name"].as_str()?.to_owned())
}

fn record(committed: &Committed, latencies: &Latencies, event: &Value) {
    let Some(name) = created(event) else { return };
    let at = committed.lock().unwrap().get(&name).copied();
    if let Some(at) = at {
        latencies.lock().unwrap().push(at.elapsed());
    }
}

async fn receive(
    State((committed, latencies)): State<(Committed, Latencies)>,
    Path(_hook): Path<usize>,
    body: Bytes,
) -> &'static str {
    if let Ok(event) = serde_json::from_slice::<Value>(&body) {
        record(&committed, &latencies, &event);
    }
    "ok"
}

fn summary(name: &str, latencies: &Latencies, expected: usize) {
    let mut all = latencies.lock().unwrap().clone();
    all.sort();
    println!(
        "{name}: {} of {expected} delivered; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// A receiver of its own and the webhooks to it, a path each: the latencies they record.
async fn subscribe_webhooks(
    args: &Args,
    client: &reqwest::Client,
    base: &str,
    committed: &Committed,
) -> anyhow::Result<Latencies> {
    let hooked: Latencies = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook/{n}", axum::routing::post(receive))
        .with_state((committed.clone(), hooked.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    for n in 0..args.webhooks {
        let hook = client
            .post(format!("{base}/webhooks"))
            .bearer_auth(&args.token)
            .json(&json!({ "url": format!("{receiver}/hook/{n}"), "types": ["commit"] }))
            .send()
            .await?;
        anyhow::ensure!(
            hook.status().is_success(),
            "webhook: {}",
            hook.text().await?
        );
    }

    Ok(hooked)
}

/// The WebSocket clients, the first `stalled` never reading: the latencies the others record.
async fn open_sockets(args: &Args, base: &str, committed: &Committed) -> anyhow::Result<Latencies> {
    let socketed: Latencies = Arc::default();
    let ws = format!("{}/events/ws", base.replacen("http", "ws", 1));
    for n in 0..args.sockets {
        let mut request = ws.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", args.token).parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        let stalled = n < args.stalled;
        let (committed, socketed) = (committed.clone(), socketed.clone());
        tokio::spawn(async move {
            if stalled {
                // Holds the connection and reads nothing.
                tokio::time::sleep(Duration::from_secs(3_600)).await;
            }
            while let Some(Ok(message)) = socket.next().await {
                match message {
                    Message::Text(text) => {
                        if let Ok(event) = serde_json::from_str::<Value>(&text) {
                            record(&committed, &socketed, &event);
                        }
                    }
                    Message::Close(frame) => {
                        if frame.is_some_and(|frame| u16::from(frame.code) == 4008) {
                            CUT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        break;
                    }
                    _ => {}
                }
            }
        });
    }
    Ok(socketed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let base = format!("{}/api/v1/tenants/{}", args.http, args.tenant);
    let created_tenant = client
        .post(format!("{}/api/v1/tenants", args.http))
        .bearer_auth(&args.token)
        .json(&json!({ "slug": args.tenant, "name": "Events load" }))
        .send()
        .await?;
    anyhow::ensure!(
        created_tenant.status().is_success(),
        "tenant: {}",
        created_tenant.status()
    );

    let committed: Committed = Arc::default();
    let hooked = subscribe_webhooks(&args, &client, &base, &committed).await?;
    let socketed = open_sockets(&args, &base, &committed).await?;
    println!(
        "{} webhooks, {} WebSocket clients ({} never reading); {} commits/s for {} s",
        args.webhooks, args.sockets, args.stalled, args.rate, args.seconds
    );

    let usage_before = args.server_pid.and_then(process_usage);
    let peak_rss = Arc::new(Mutex::new(0_u64));
    if let Some(pid) = args.server_pid {
        let peak_rss = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                if let Some((rss, _)) = process_usage(pid) {
                    let mut peak = peak_rss.lock().unwrap();
                    *peak = (*peak).max(rss);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / u32::try_from(args.rate)?);
    let total = usize::try_from(args.rate * args.seconds)?;
    // Each commit on its own task, so that the rate holds whatever one commit takes.
    let mut commits = tokio::task::JoinSet::new();
    for n in 0..total {
        tick.tick().await;
        let name = format!("c{n}");
        let body = json!({ "name": name, "type": "STATIC", "connect_timeout": "1s" });
        // From the request on: an event may arrive before the answer is read.
        let sent = Instant::now();
        committed.lock().unwrap().insert(name.clone(), sent);
        let request = client
            .put(format!("{base}/clusters/{name}"))
            .bearer_auth(&args.token)
            .json(&body);
        commits.spawn(async move {
            match request.send().await {
                Ok(answer) if answer.status().is_success() => Some(sent.elapsed()),
                _ => None,
            }
        });
    }
    let mut failed = 0;
    let mut commit_times = Vec::with_capacity(total);
    while let Some(done) = commits.join_next().await {
        match done.ok().flatten() {
            Some(took) => commit_times.push(took),
            None => failed += 1,
        }
    }
    let committing = started.elapsed();
    let usage_after = args.server_pid.and_then(process_usage);
    // Whatever is still on its way.
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "{} commits in {:.1} s ({failed} failed)",
        total - failed,
        committing.as_secs_f64()
    );
    commit_times.sort();
    println!(
        "commit (PUT to its answer): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&commit_times, 0.5).as_secs_f64() * 1e3,
        percentile(&commit_times, 0.99).as_secs_f64() * 1e3,
    );
    let landed = total - failed;
    summary(
        "WebSocket",
        &socketed,
        landed * (args.sockets - args.stalled),
    );
    summary("webhooks", &hooked, landed * args.webhooks);
    println!(
        "WebSocket clients cut as too slow: {}",
        CUT.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let (Some((_, before)), Some((rss, after))) = (usage_before, usage_after) {
        println!(
            "control plane: {:.2} CPU-seconds per second of commits, resident {} MiB at the end, peak {} MiB",
            (after - before) / committing.as_secs_f64(),
            rss / 1024,
            *peak_rss.lock().unwrap() / 1024
        );
    }
    Ok(())
}
