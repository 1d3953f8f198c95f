//! What deciding a commit costs in the configuration aggregate as it grows, and what loading it
//! from a snapshot costs (what every command paid before states were kept warm). Prints a Markdown
//! table: `cargo run --release -p efms-domain --example decide_cost` (sizes: `EFMS_BENCH_SIZES`,
//! default 1000,10000,100000).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cqrs_es::Aggregate as _;
use efms_domain::config::limits::CommitContext;
use efms_domain::config::{
    content_hash, references, Change, ConfigCommand, ConfigEvent, ConfigRepo, Expect, Operation,
};
use efms_domain::envoy::ResourceKind;
use serde_json::{json, Value};

fn cluster(name: &str, port: u32) -> Value {
    json!({ "name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": { "eds_config": { "ads": {} }, "service_name": name },
            "lb_policy": "ROUND_ROBIN", "port": port })
}

fn endpoints(name: &str) -> Value {
    json!({ "cluster_name": name })
}

/// A repository of `n` resources: half clusters, each referring to endpoints of its own name.
fn repo(n: usize) -> ConfigRepo {
    let mut repo = ConfigRepo::default();
    repo.apply(ConfigEvent::Committed {
        revision: 1,
        message: None,
        operation: Operation::Bulk,
        merged: None,
    });
    for i in 0..n / 2 {
        let name = format!("c-{i}");
        for (kind, document) in [
            (ResourceKind::Endpoints, endpoints(&name)),
            (ResourceKind::Cluster, cluster(&name, 1)),
        ] {
            repo.apply(ConfigEvent::ResourceCreated {
                revision: 1,
                kind,
                name: name.clone(),
                hash: content_hash(&document),
                refs: references(kind, &document),
                document,
                derivation: None,
            });
        }
    }
    repo
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn commit(changes: Vec<Change>) -> ConfigCommand {
    ConfigCommand::Commit {
        message: None,
        operation: Operation::Replace,
        changes,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("EFMS_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".to_owned())
        .split(',')
        .map(|s| s.trim().parse().expect("a size"))
        .collect();
    let context = CommitContext::default();
    println!("| resources | decide one replacement | decide one deletion | load from a snapshot | write a snapshot |");
    println!("|---|---|---|---|---|");
    for n in sizes {
        let repo = repo(n);
        let document = cluster("c-7", 2);
        let replace = median(21, || {
            let changes = vec![Change::Put {
                kind: ResourceKind::Cluster,
                name: "c-7".to_owned(),
                refs: references(ResourceKind::Cluster, &document),
                document: document.clone(),
                expect: Expect::Present,
            }];
            repo.decide_command(commit(changes), &context).unwrap();
        });
        let delete = median(21, || {
            let changes = vec![Change::Delete {
                kind: ResourceKind::Cluster,
                name: "c-9".to_owned(),
                expect: Expect::Present,
            }];
            repo.decide_command(commit(changes), &context).unwrap();
        });
        let stored = serde_json::to_value(&repo).unwrap();
        let load = median(5, || {
            let _: ConfigRepo = serde_json::from_value(stored.clone()).unwrap();
        });
        let write = median(5, || {
            let _ = serde_json::to_value(&repo).unwrap();
        });
        println!("| {n} | {replace:.2?} | {delete:.2?} | {load:.2?} | {write:.2?} |");
    }
}
