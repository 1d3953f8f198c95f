//! The host's facts and utilisation, read from the real /proc and compared with what the
//! system's own tools say.

mod support;

use std::process::Command;

use efms_agent::host::{facts, usage::UsageSampler};
use efms_agent::Engine;
use support::TestEngine;

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program} {args:?} runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn facts_name_this_host_its_kernel_cpus_memory_disks_and_docker_engine() {
    let Some(test_engine) = TestEngine::start("agent") else {
        return;
    };
    let engine = Engine::connect(Some(&test_engine.host)).await.unwrap();
    let facts = facts::collect(Some(&engine)).await.unwrap();

    assert_eq!(facts.hostname, tool("hostname", &[]));
    assert_eq!(facts.kernel, tool("uname", &["-r"]));
    assert_eq!(facts.architecture, tool("uname", &["-m"]));
    assert_eq!(
        facts.cpu_count.to_string(),
        tool("getconf", &["_NPROCESSORS_ONLN"])
    );
    let memory = tool("free", &["-b"]);
    let total = memory
        .lines()
        .find(|line| line.starts_with("Mem:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(facts.memory_bytes.to_string(), total);
    let root = facts
        .disks
        .iter()
        .find(|disk| disk.mount_point == "/")
        .expect("the root file system is a disk");
    let df = tool("df", &["--block-size=1", "--output=size", "/"]);
    assert_eq!(
        root.size_bytes.to_string(),
        df.lines().last().unwrap().trim()
    );
    assert!(!facts.os.is_empty());
    assert!(facts
        .addresses
        .iter()
        .all(|address| !address.address.is_loopback()));
    let docker = facts.docker.expect("the engine's version is known");
    assert_eq!(
        docker.version,
        test_engine.docker(&["version", "--format", "{{.Server.Version}}"])
    );
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn without_an_engine_the_facts_say_nothing_of_docker() {
    let facts = facts::collect(None).await.unwrap();
    assert_eq!(facts.docker, None);
    assert!(facts.cpu_count >= 1);
}

#[test]
fn utilisation_is_within_the_hosts_bounds() {
    let mut sampler = UsageSampler::new().unwrap();
    // Some work between the two samples, so the CPU counters move.
    let mut sum = 0_u64;
    for n in 0..5_000_000_u64 {
        sum = sum.wrapping_add(n.wrapping_mul(n));
    }
    assert_ne!(sum, 1);
    let usage = sampler.sample().unwrap();
    assert!((0.0..=100.0).contains(&usage.cpu_percent));
    assert!(usage.load.iter().all(|load| *load >= 0.0));
    assert!(usage.memory_used_bytes > 0 && usage.memory_used_bytes < usage.memory_total_bytes);
    let root = usage
        .disks
        .iter()
        .find(|disk| disk.mount_point == "/")
        .expect("the root file system is a disk");
    assert!(root.used_bytes > 0 && root.used_bytes <= root.size_bytes);
    assert!(root.available_bytes <= root.size_bytes - root.used_bytes);
    assert!(usage.network_rx_bytes_per_second >= 0.0);
    assert!(usage.network_tx_bytes_per_second >= 0.0);
    let again = sampler.sample().unwrap();
    assert!((0.0..=100.0).contains(&again.cpu_percent));
}
