//! The agent's link to a real gRPC server speaking the fleet protocol: what opens a stream, how
//! reports are numbered and sent again after a reconnection, the token re-read from its file, a
//! refused token retried, TLS with a given CA, shutdown; and, with a real Docker engine, the
//! snapshot, events, usage, a new watched image, and the events resumed after the control plane's
//! last stored one.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use efms_agent::link::{self, LinkSettings};
use efms_fleet_proto::agent_message::Body;
use efms_fleet_proto::server_message::Body as ServerBody;
use efms_fleet_proto::{
    Ack, AgentMessage, ContainerState, EventKind, Heartbeat, Revoked, Settings,
};
use support::control_plane::{Connection, ControlPlane};
use support::{unique, PATIENCE};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An engine address where nothing listens.
const NO_ENGINE: &str = "unix:///nonexistent/efms/docker.sock";

/// An agent process's link, run until [`Agent::shutdown`].
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), link::LinkError>>,
    token_file: PathBuf,
}

impl Agent {
    fn start(control_plane: &ControlPlane, docker_host: &str) -> Self {
        Self::start_with(control_plane, docker_host, None)
    }

    fn start_with(
        control_plane: &ControlPlane,
        docker_host: &str,
        ca_file: Option<PathBuf>,
    ) -> Self {
        let dir = std::env::temp_dir().join(unique("efms-agent-link"));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        write_token(&token_file, "token-1\n");
        let settings = LinkSettings {
            docker_host: Some(docker_host.to_owned()),
            region: "eu-west".into(),
            zone: "eu-west-1a".into(),
            labels: BTreeMap::from([("rack".into(), "r7".into())]),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ca_file,
            ..LinkSettings::new(control_plane.address.to_string(), &token_file)
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(link::run(settings, async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
            token_file,
        }
    }

    /// Ends the link; panics unless it returns cleanly.
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the link ends at shutdown")
            .expect("the link's task ran to its end")
            .expect("the link ends without error");
    }
}

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, token).unwrap();
}

fn heartbeat(message: &AgentMessage) -> Option<&Heartbeat> {
    match &message.body {
        Some(Body::Heartbeat(heartbeat)) => Some(heartbeat),
        _ => None,
    }
}

/// Reads until `count` heartbeats came; every message read, in order.
async fn until_heartbeats(connection: &mut Connection, count: usize) -> Vec<AgentMessage> {
    let mut messages = Vec::new();
    while messages.iter().filter(|m| heartbeat(m).is_some()).count() < count {
        messages.push(connection.expect().await);
    }
    messages
}

fn seqs(messages: &[AgentMessage]) -> Vec<u64> {
    messages.iter().map(|message| message.seq).collect()
}

#[tokio::test]
async fn the_first_message_is_hello_with_the_facts_the_flags_and_the_token_from_its_file() {
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let mut connection = control_plane.next_connection().await;
    assert_eq!(connection.authorization.as_deref(), Some("Bearer token-1"));
    let hello = connection.hello().await;
    assert_eq!(hello.epoch.len(), 32, "{:?}", hello.epoch);
    assert!(hello.epoch.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(hello.region, "eu-west");
    assert_eq!(hello.zone, "eu-west-1a");
    assert_eq!(hello.labels.get("rack").map(String::as_str), Some("r7"));
    let facts = hello.facts.expect("Hello carries the facts");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(facts.hostname, hostname.trim());
    assert!(facts.cpu_count >= 1);
    assert!(facts.memory_bytes > 0);
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(facts.docker, None, "no engine answers at {NO_ENGINE}");

    agent.shutdown().await;
    // The agent ended its side of the stream.
    assert_eq!(connection.next().await, None);
}

#[tokio::test]
async fn reports_are_numbered_from_one_and_heartbeats_follow_the_welcomes_interval_saying_the_engine_is_unreachable(
) {
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let mut connection = control_plane.next_connection().await;
    connection.hello().await;
    connection.welcome(0, 200, 0);
    // Five heartbeats at the default interval (10 s) would take 40 s: these come at 200 ms.
    let messages = tokio::time::timeout(
        Duration::from_secs(30),
        until_heartbeats(&mut connection, 5),
    )
    .await
    .expect("heartbeats at the Welcome's interval, not the default");
    let expected: Vec<u64> = (1..=messages.len() as u64).collect();
    assert_eq!(seqs(&messages), expected);
    let heartbeats: Vec<&Heartbeat> = messages.iter().filter_map(heartbeat).collect();
    assert_eq!(heartbeats[0].usage, None, "the first has no utilisation");
    assert!(heartbeats[1..].iter().all(|h| h.usage.is_some()));
    assert!(heartbeats
        .iter()
        .all(|h| !h.engine_reachable && !h.engine_error.is_empty()));
    let last = heartbeats.last().unwrap();
    assert!(
        last.engine_error.contains("/nonexistent/efms/docker.sock"),
        "the heartbeat says why the engine cannot be reached: {last:?}"
    );
    let usage = heartbeats.last().unwrap().usage.as_ref().unwrap();
    assert!(usage.memory_total_bytes > 0);
    assert!((0.0..=100.0).contains(&usage.cpu_percent));
    agent.shutdown().await;
}

#[tokio::test]
async fn after_the_server_drops_the_stream_the_agent_sends_again_exactly_what_was_not_stored() {
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let mut first = control_plane.next_connection().await;
    let hello = first.hello().await;
    first.welcome(0, 100, 0);
    let mut sent = Vec::new();
    while sent.len() < 7 {
        sent.push(first.expect().await);
    }
    first.send(ServerBody::Ack(Ack { seq: 2 }));
    drop(first);

    let mut second = control_plane.next_connection().await;
    let again = second.hello().await;
    assert_eq!(again.epoch, hello.epoch, "one process, one epoch");
    // The server stored more than it acked on the last stream: the agent resumes after it.
    second.welcome(4, 100, 0);
    let mut resent = Vec::new();
    while resent.len() < 6 {
        resent.push(second.expect().await);
    }
    assert_eq!(seqs(&resent), (5..=10).collect::<Vec<u64>>());
    assert_eq!(resent[..3], sent[4..7], "the same reports, in order");
    agent.shutdown().await;

    // Another process is another epoch, numbered from 1 again.
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let mut third = control_plane.next_connection().await;
    let other = third.hello().await;
    assert_ne!(other.epoch, hello.epoch);
    third.welcome(0, 100, 0);
    assert_eq!(third.expect().await.seq, 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_new_token_written_to_the_file_is_used_at_the_next_attempt() {
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let first = control_plane.next_connection().await;
    assert_eq!(first.authorization.as_deref(), Some("Bearer token-1"));
    write_token(&agent.token_file, "  token-2\n\n");
    first.fail(tonic::Status::unauthenticated("unknown join token"));
    let mut second = control_plane.next_connection().await;
    assert_eq!(second.authorization.as_deref(), Some("Bearer token-2"));
    second.hello().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_revoked_or_refused_agent_keeps_retrying_until_shutdown() {
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let mut first = control_plane.next_connection().await;
    first.hello().await;
    first.welcome(0, 10_000, 0);
    first.send(ServerBody::Revoked(Revoked {
        reason: "the VM was removed".into(),
    }));
    let mut second = control_plane.next_connection().await;
    second.hello().await;
    second.fail(tonic::Status::permission_denied("revoked token"));
    let mut third = control_plane.next_connection().await;
    third.hello().await;
    assert!(!agent.task.is_finished(), "the agent does not exit");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_real_engines_containers_events_and_usage_are_reported_and_a_restarted_agent_resumes_events_after_the_last_stored(
) {
    let Some(engine) = support::TestEngine::start("link") else {
        return;
    };
    let name = unique("linked");
    let id = engine.run_envoy(&name, &name, &[]);
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, &engine.host);
    let mut connection = control_plane.next_connection().await;
    connection.hello().await;
    connection.welcome(0, 500, 0);
    // What the stream must tell of the engine, struck off as it comes.
    let mut untold = BTreeSet::from([
        "the engine's version in the facts",
        "the container running in a snapshot",
        "a heartbeat saying the engine answers",
        "the container's usage",
    ]);
    while !untold.is_empty() {
        let told = match connection.expect().await.body {
            Some(Body::Facts(facts)) if facts.docker.is_some() => {
                "the engine's version in the facts"
            }
            Some(Body::Snapshot(snapshot))
                if snapshot.containers.iter().any(|container| {
                    container.id == id
                        && container.state() == ContainerState::Running
                        && container.node_id.as_deref() == Some(name.as_str())
                }) =>
            {
                "the container running in a snapshot"
            }
            Some(Body::Heartbeat(heartbeat)) if heartbeat.engine_reachable => {
                "a heartbeat saying the engine answers"
            }
            Some(Body::Usage(usage))
                if usage
                    .containers
                    .iter()
                    .any(|usage| usage.container_id == id && usage.memory_used_bytes > 0) =>
            {
                "the container's usage"
            }
            _ => continue,
        };
        untold.remove(told);
    }

    // The control plane asks for an image's containers too: the feed starts again with that
    // watch, and its snapshot has an unlabelled container of the image.
    let unlabelled = unique("unlabelled");
    let unlabelled_id = engine.docker(&["create", "--name", &unlabelled, &engine.image]);
    connection.send(ServerBody::Settings(Settings {
        heartbeat_interval_ms: 500,
        watch_images: vec![engine.image.clone()],
    }));
    loop {
        if let Some(Body::Snapshot(snapshot)) = connection.expect().await.body {
            if let Some(container) = snapshot.containers.iter().find(|c| c.id == unlabelled_id) {
                assert_eq!(container.node_id, None);
                assert_eq!(container.state(), ContainerState::Created);
                break;
            }
        }
    }

    engine.docker(&["kill", &name]);
    let die = loop {
        if let Some(Body::Event(event)) = connection.expect().await.body {
            if event.container_id == id && event.kind() == EventKind::Die {
                break event;
            }
        }
    };
    assert_eq!(die.exit_code, Some(137));
    assert_eq!(die.node_id.as_deref(), Some(name.as_str()));
    agent.shutdown().await;

    // A new process: the control plane stored every event before the die.
    let agent = Agent::start(&control_plane, &engine.host);
    let mut connection = control_plane.next_connection().await;
    connection.hello().await;
    connection.welcome(0, 10_000, die.time_nanos - 1);
    let replayed = loop {
        if let Some(Body::Event(event)) = connection.expect().await.body {
            if event.container_id == id && event.kind() == EventKind::Die {
                break event;
            }
        }
    };
    assert_eq!(
        replayed, die,
        "the engine told the die again, since the last stored event"
    );
    agent.shutdown().await;
    engine.remove(&[&name, &unlabelled]);
}

/// A CA and a certificate it signed for 127.0.0.1, made with `openssl`: the CA's PEM, and the
/// certificate's chain and key.
fn certificates(dir: &Path) -> (PathBuf, String, String) {
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-days",
                "1",
                "-subj",
                "/CN=efms agent test CA",
            ][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=control plane"][..],
            &key,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    (dir.join("ca.pem"), read("server.pem"), read("server.key"))
}

#[tokio::test]
async fn with_a_ca_file_the_stream_is_tls_trusting_that_ca() {
    let dir = std::env::temp_dir().join(unique("efms-agent-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, chain, key) = certificates(&dir);
    let mut control_plane = ControlPlane::start_tls(&chain, &key).await;
    let agent = Agent::start_with(&control_plane, NO_ENGINE, Some(ca));
    let mut connection = control_plane.next_connection().await;
    assert_eq!(connection.authorization.as_deref(), Some("Bearer token-1"));
    connection.hello().await;
    connection.welcome(0, 100, 0);
    assert_eq!(connection.expect().await.seq, 1);
    agent.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_settings_message_changes_the_heartbeat_interval() {
    let mut control_plane = ControlPlane::start().await;
    let agent = Agent::start(&control_plane, NO_ENGINE);
    let mut connection = control_plane.next_connection().await;
    connection.hello().await;
    connection.welcome(0, 60_000, 0);
    // The engine's state is told at once; the next heartbeat would be a minute later.
    until_heartbeats(&mut connection, 1).await;
    connection.send(ServerBody::Settings(Settings {
        heartbeat_interval_ms: 200,
        watch_images: vec![],
    }));
    tokio::time::timeout(
        Duration::from_secs(30),
        until_heartbeats(&mut connection, 4),
    )
    .await
    .expect("heartbeats at the new interval");
    agent.shutdown().await;
}
