//! Real Docker engines for the agent's tests, run by the project's scripts (scripts/dockerd.sh),
//! with the Envoy image scripts/envoy-image.sh builds; and a control plane speaking the fleet
//! protocol ([`control_plane`]).
#![allow(dead_code)]

pub mod control_plane;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use efms_agent::feed::{Feed, FeedItem};

/// Long enough for any engine on a busy machine; a guard against hanging, not a measure.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate is in the workspace")
        .to_path_buf()
}

fn script(name: &str, args: &[&str]) -> Output {
    Command::new(workspace().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("scripts/{name} runs: {error}"))
}

fn stdout_of(name: &str, args: &[&str]) -> String {
    let output = script(name, args);
    assert!(
        output.status.success(),
        "scripts/{name} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The docker CLI that came with the engine, else any on the PATH.
fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on the host (Envoy containers share the host's network).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Docker engine standing for one VM.
pub struct TestEngine {
    /// Its name for scripts/dockerd.sh.
    pub name: String,
    /// Its DOCKER_HOST.
    pub host: String,
    /// The Envoy image loaded into it.
    pub image: String,
}

impl TestEngine {
    /// Starts engine `name` (or finds it running), installing Docker first when missing; `None`,
    /// saying why, only when Docker cannot be installed on this machine.
    pub fn start(name: &str) -> Option<Self> {
        let install = script("install-docker.sh", &[]);
        if !install.status.success() {
            eprintln!(
                "SKIPPED: Docker cannot be installed here, so no engine to test against: {}",
                String::from_utf8_lossy(&install.stderr).trim()
            );
            return None;
        }
        let image = stdout_of("envoy-image.sh", &[]);
        let host = stdout_of("dockerd.sh", &["start", name]);
        Some(Self {
            name: name.to_owned(),
            host,
            image,
        })
    }

    /// Stops the engine (its containers stop with it).
    pub fn stop(&self) {
        stdout_of("dockerd.sh", &["stop", &self.name]);
    }

    /// Starts the engine again.
    pub fn restart(&self) {
        let host = stdout_of("dockerd.sh", &["start", &self.name]);
        assert_eq!(host, self.host);
    }

    /// Runs the docker CLI against this engine.
    pub fn docker_output(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .expect("the docker CLI runs")
    }

    /// Runs the docker CLI against this engine; its output, trimmed; panics when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = self.docker_output(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Starts an Envoy container labelled with `node_id`, its admin on a free host port, with
    /// `extra` arguments for `docker run` (limits, ...); its id.
    pub fn run_envoy(&self, name: &str, node_id: &str, extra: &[&str]) -> String {
        let admin = free_port();
        let dir = std::env::temp_dir().join(unique("efms-agent-envoy"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("envoy.yaml");
        std::fs::write(
            &config,
            format!(
                "node: {{id: {node_id}, cluster: agent-tests}}\n\
                 admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n"
            ),
        )
        .unwrap();
        let label = format!("efms.node_id={node_id}");
        let port = format!("ENVOY_ADMIN_PORT={admin}");
        let mount = format!("{}:/etc/envoy/envoy.yaml:ro", config.display());
        let mut args = vec![
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            "--label",
            &label,
            "--env",
            &port,
            "--volume",
            &mount,
        ];
        args.extend_from_slice(extra);
        // Envoys sharing the host's network would share the hot-restart socket.
        args.extend_from_slice(&[
            &self.image,
            "-c",
            "/etc/envoy/envoy.yaml",
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ]);
        self.docker(&args)
    }

    /// Removes containers, whatever their state.
    pub fn remove(&self, names: &[&str]) {
        let mut args = vec!["rm", "--force"];
        args.extend_from_slice(names);
        let _ = self.docker_output(&args);
    }
}

/// The next item of `feed` for which `wanted` says yes, the ones before it given to `seen`;
/// panics after [`PATIENCE`].
pub async fn next_item(
    feed: &mut Feed,
    mut wanted: impl FnMut(&FeedItem) -> bool,
    mut seen: impl FnMut(&FeedItem),
) -> FeedItem {
    let wait = async {
        while let Some(item) = feed.items.recv().await {
            if wanted(&item) {
                return item;
            }
            seen(&item);
        }
        panic!("the feed ended");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the feed told what was expected")
}
