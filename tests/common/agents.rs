//! Real agents (`efms_agent::link`, as `efms agent` runs it) against a test control plane and a
//! real Docker engine, and the reads that wait for what they report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use efms_agent::link::{self, LinkSettings};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::docker::Engine;
use crate::fleet::eventually;
use crate::TestApp;

/// The tenant the fleet's tests work in.
pub const BASE: &str = "/api/v1/tenants/acme";

/// Generous: engines and Envoys start slowly on a busy machine.
pub const WAIT: Duration = Duration::from_secs(90);

/// An agent running in this process, as `efms agent` would.
pub struct RunningAgent {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// Starts an agent of the VM whose join token is in `token_file`, on `engine`, keeping its
    /// files in a directory of its own.
    pub fn start(app: &TestApp, token_file: &Path, engine: &Engine) -> Self {
        Self::start_where(app, token_file, engine, |_| {})
    }

    /// [`RunningAgent::start`], with `configure` changing its settings first.
    pub fn start_where(
        app: &TestApp,
        token_file: &Path,
        engine: &Engine,
        configure: impl FnOnce(&mut LinkSettings),
    ) -> Self {
        let mut settings = LinkSettings::new(app.grpc.to_string(), token_file.to_path_buf());
        settings.docker_host = Some(engine.host.clone());
        settings.backoff_initial = Duration::from_millis(100);
        settings.backoff_max = Duration::from_secs(1);
        settings.state_dir =
            std::env::temp_dir().join(format!("efms-agent-state-{}", uuid::Uuid::new_v4()));
        configure(&mut settings);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = link::run(settings, shutdown).await {
                eprintln!("the agent ended: {error}");
            }
        });
        Self { stop, task }
    }

    /// Kills it: the task is dropped where it stands, its stream cut without a goodbye.
    pub fn kill(self) {
        self.task.abort();
        drop(self.stop);
    }
}

/// The fleet's upkeep for tests of launched containers: heartbeats every second, a VM silent
/// for five seconds is lost.
pub fn quick_upkeep() -> efms_commands::fleet::upkeep::UpkeepSettings {
    efms_commands::fleet::upkeep::UpkeepSettings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_grace: Duration::from_secs(5),
        ..efms_commands::fleet::upkeep::UpkeepSettings::default()
    }
}

/// Heartbeats every second and a grace long enough that a heartbeat made late by a loaded
/// machine never turns the VM `down`: for tests in which no agent dies.
pub fn steady_upkeep() -> efms_commands::fleet::upkeep::UpkeepSettings {
    efms_commands::fleet::upkeep::UpkeepSettings {
        heartbeat_grace: Duration::from_secs(60),
        ..quick_upkeep()
    }
}

/// `GET path`'s body, which must not be a server error.
pub async fn get(app: &TestApp, path: &str) -> Value {
    let answer = app.get(path).await;
    assert!(answer.status < 500, "{path}: {}", answer.body);
    answer.body
}

/// `GET path` once `ready` holds of its body.
pub async fn settled(app: &TestApp, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, path, || async {
        let body = get(app, path).await;
        ready(&body).then_some(body)
    })
    .await
}

/// Registers VM `name` in the tenant at `base` (`/api/v1/tenants/{slug}`); answers the file
/// holding its join token.
pub async fn register(app: &TestApp, base: &str, name: &str) -> PathBuf {
    let answer = app
        .post(
            &format!("{base}/vms"),
            &json!({ "name": name, "region": "local" }),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let file = std::env::temp_dir().join(format!("efms-join-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, answer.body["join_token"].as_str().unwrap()).unwrap();
    file
}

/// A tenant `acme` with a group `edge` (one cluster), VM `vm-a` registered and its agent
/// connected to `engine`, which holds no container.
pub async fn acme_with_ready_vm(app: &TestApp, engine: &Engine) -> RunningAgent {
    acme_with_ready_vm_where(app, engine, |_| {}).await
}

/// [`acme_with_ready_vm`], with `configure` changing the agent's settings first.
pub async fn acme_with_ready_vm_where(
    app: &TestApp,
    engine: &Engine,
    configure: impl FnOnce(&mut LinkSettings),
) -> RunningAgent {
    engine.remove_all();
    app.create_tenant("acme", "Acme").await;
    let cluster = json!({
        "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "upstream", "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] }
    });
    let created = app.post(&format!("{BASE}/clusters"), &cluster).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let group = json!({ "name": "edge", "resources": [{ "kind": "cluster", "name": "upstream" }] });
    let attached = app.put(&format!("{BASE}/groups/edge"), &group, &[]).await;
    assert!(attached.status < 300, "{}", attached.body);
    let token = register(app, BASE, "vm-a").await;
    let agent = RunningAgent::start_where(app, &token, engine, configure);
    settled(app, &format!("{BASE}/vms/vm-a"), |vm| {
        vm["state"] == "ready"
    })
    .await;
    agent
}

/// Posts an operation on containers; answers its job once it ended.
pub async fn carried_out(app: &TestApp, path: &str, body: &Value) -> Value {
    let answer = app.post(path, body).await;
    assert_eq!(answer.status, 202, "{path}: {}", answer.body);
    job_end(app, &answer.body).await
}

/// The job of an operation on containers, once it ended.
pub async fn job_end(app: &TestApp, job: &Value) -> Value {
    assert_eq!(job["kind"], "container_operation", "{job}");
    let id = job["id"].as_str().unwrap();
    settled(app, &format!("{BASE}/jobs/{id}"), |job| {
        job["state"] != "running"
    })
    .await
}
