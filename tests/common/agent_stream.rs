//! An agent's side of the fleet protocol, spoken by hand: its stream, its Hello and the reports
//! tests send on it.

use std::collections::HashMap;
use std::time::Duration;

use efms_fleet_proto::{
    agent_message::Body, server_message, AgentMessage, Container, ContainerState, EngineVersion,
    Health, Hello, HostFacts, HostUsage, ServerMessage,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::TestApp;

/// The API of the tenant `acme`, where the tests' VMs are.
pub const BASE: &str = "/api/v1/tenants/acme";

/// How long an answer may take.
const WAIT: Duration = Duration::from_secs(20);

/// Tenant `acme` with the VM `vm-1` registered; its join token.
pub async fn acme(app: &TestApp) -> String {
    app.create_tenant("acme", "Acme").await;
    register(app, "vm-1").await
}

/// Registers the VM `name` in `acme` (labelled, in a region); its join token.
pub async fn register(app: &TestApp, name: &str) -> String {
    let answer = app
        .post(
            &format!("{BASE}/vms"),
            &json!({ "name": name, "labels": { "role": "edge" }, "region": "eu-west" }),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.body["join_token"].as_str().unwrap().to_owned()
}

/// The full id of the test container named by `c` (`c` 64 times).
pub fn container_id(c: char) -> String {
    c.to_string().repeat(64)
}

/// A host's facts, with or without a Docker engine answering.
pub fn facts(docker: bool) -> HostFacts {
    HostFacts {
        hostname: "host-1".into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        architecture: "x86_64".into(),
        cpu_count: 2,
        memory_bytes: 8 << 30,
        docker: docker.then(|| EngineVersion {
            version: "20.10.24".into(),
            api_version: "1.41".into(),
            negotiated_api_version: "1.41".into(),
        }),
        agent_version: "0.1.0".into(),
        ..HostFacts::default()
    }
}

/// A host's utilisation at `cpu_percent`.
pub fn usage(cpu_percent: f64) -> HostUsage {
    HostUsage {
        cpu_percent,
        load_1m: 0.5,
        load_5m: 0.4,
        load_15m: 0.3,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 8 << 30,
        ..HostUsage::default()
    }
}

/// The test container named by `c`, in `state`, healthy, with limits and its proxy's label.
pub fn container(c: char, state: ContainerState) -> Container {
    Container {
        id: container_id(c),
        name: format!("envoy-{c}"),
        image: "efms-test/envoy:1.40.0".into(),
        image_id: "sha256:0".into(),
        node_id: Some(format!("node-{c}")),
        state: state.into(),
        health: Health::Healthy.into(),
        limits: Some(efms_fleet_proto::Limits {
            memory_bytes: Some(256 << 20),
            cpus: Some(0.5),
            pids: None,
        }),
        labels: HashMap::from([("efms.node_id".to_owned(), format!("node-{c}"))]),
        ..Container::default()
    }
}

/// An agent's open stream.
pub struct Agent {
    /// Where its reports go.
    pub sender: mpsc::Sender<AgentMessage>,
    /// The server's answers.
    pub answers: tonic::Streaming<ServerMessage>,
    /// The seq of the last report sent.
    pub seq: u64,
}

impl Agent {
    /// How the server ends the stream within `wait`, reading past its answers: `Some(code)`
    /// for a status, `None` for a plain end. Panics when it has not ended by then.
    pub async fn ended(&mut self, wait: std::time::Duration) -> Option<tonic::Code> {
        tokio::time::timeout(wait, async {
            loop {
                match self.answers.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status.code()),
                }
            }
        })
        .await
        .expect("the stream is cut in time")
    }

    /// Connects with `token` as the process `epoch` and says Hello.
    pub async fn connect(
        app: &TestApp,
        token: &str,
        epoch: &str,
    ) -> Result<(Self, ServerMessage), Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (sender, receiver) = mpsc::channel(16);
        let hello = AgentMessage {
            seq: 1,
            body: Some(Body::Hello(Hello {
                epoch: epoch.into(),
                facts: Some(facts(true)),
                ..Hello::default()
            })),
        };
        sender.send(hello).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut answers = efms_fleet_proto::connect(channel, request).await?;
        let welcome = answers.message().await?.expect("a Welcome");
        Ok((
            Self {
                sender,
                answers,
                seq: 1,
            },
            welcome,
        ))
    }

    /// Sends one report and returns the server's answer to it.
    pub async fn report(&mut self, body: Body) -> ServerMessage {
        self.send(body).await;
        self.answer().await
    }

    /// Sends one report without waiting for its answer; its seq.
    pub async fn send(&mut self, body: Body) -> u64 {
        self.seq += 1;
        let message = AgentMessage {
            seq: self.seq,
            body: Some(body),
        };
        self.sender.send(message).await.unwrap();
        self.seq
    }

    /// The server's next answer.
    pub async fn answer(&mut self) -> ServerMessage {
        tokio::time::timeout(WAIT, self.answers.message())
            .await
            .expect("an answer in time")
            .expect("the stream stays open")
            .expect("an answer")
    }

    /// Whether `answer` acknowledges report `seq`.
    pub fn acked(answer: &ServerMessage, seq: u64) -> bool {
        matches!(&answer.body, Some(server_message::Body::Ack(ack)) if ack.seq == seq)
    }
}
