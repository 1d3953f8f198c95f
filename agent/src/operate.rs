//! Operations on the VM's Envoy containers, as the control plane orders them: launch one for a
//! group, restart, stop, start or remove one, through the Docker Engine API.
//!
//! A launched container runs the image's Envoy with the bootstrap the control plane minted,
//! written to a file under the agent's state directory, in a directory only root enters, and
//! mounted read-only (the file itself is readable, since images run Envoy as a user of their
//! own): never in the environment or the command line, which `docker inspect` shows. It
//! shares the host's network (proxies of one group on one VM share listener ports through
//! `SO_REUSEPORT`, Envoy's default on Linux; `--disable-hot-restart` keeps them from sharing the
//! hot-restart socket), is health-checked on its admin interface's `/ready` with the image's
//! `wget`, restarts unless stopped, and carries the labels `efms.node_id`, `efms.group` and
//! `efms.operation` (by which a launch ordered again finds the container it made).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HealthConfig, HostConfig, RestartPolicy,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use efms_fleet_proto::{order::Action, Launch};

use crate::engine::{is_not_found, Engine};
use crate::inventory::NODE_ID_LABEL;

/// The label naming a container's group.
pub const GROUP_LABEL: &str = "efms.group";
/// The label naming the operation that launched a container.
pub const OPERATION_LABEL: &str = "efms.operation";
/// The label naming a launched container's admin port.
pub const ADMIN_PORT_LABEL: &str = "efms.admin_port";
/// Where the bootstrap is mounted in the container.
const BOOTSTRAP_IN_CONTAINER: &str = "/etc/envoy/bootstrap.json";
/// How long a stop or restart lets Envoy end before it is killed, in seconds.
const STOP_GRACE_SECONDS: i32 = 10;
const SECOND_NANOS: i64 = 1_000_000_000;
/// How long a drained proxy is left to finish the requests under way before it is stopped.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What an operation that succeeded made or learnt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// The container made or acted on (none for a probe).
    pub container_id: String,
    /// A probe's image id.
    pub image_id: String,
    /// A probe's Envoy version.
    pub envoy_version: String,
}

/// Carries out `action` of operation `operation_id`; answers what it made or learnt, or the
/// engine's words.
pub async fn carry_out(
    engine: &Engine,
    state_dir: &Path,
    operation_id: &str,
    action: Action,
) -> Result<Carried, String> {
    if let Action::Probe(image) = &action {
        let (image_id, envoy_version) = crate::probe::envoy_version(engine, image).await?;
        return Ok(Carried {
            image_id,
            envoy_version,
            ..Carried::default()
        });
    }
    on_container(engine, state_dir, operation_id, action)
        .await
        .map(|container_id| Carried {
            container_id,
            ..Carried::default()
        })
}

/// Carries out an action on a container; answers the container.
async fn on_container(
    engine: &Engine,
    state_dir: &Path,
    operation_id: &str,
    action: Action,
) -> Result<String, String> {
    let docker = engine.docker();
    let failed = |error: bollard::errors::Error| engine.api_error(error).to_string();
    match action {
        Action::Probe(_) => Err("a probe acts on no container".to_owned()),
        Action::Launch(launch) => launch_once(engine, state_dir, operation_id, &launch).await,
        Action::Restart(id) => {
            let options = RestartContainerOptionsBuilder::new()
                .t(STOP_GRACE_SECONDS)
                .build();
            docker
                .restart_container(&id, Some(options))
                .await
                .map_err(failed)?;
            Ok(id)
        }
        Action::Stop(id) => {
            let options = StopContainerOptionsBuilder::new()
                .t(STOP_GRACE_SECONDS)
                .build();
            docker
                .stop_container(&id, Some(options))
                .await
                .map_err(failed)?;
            Ok(id)
        }
        Action::Start(id) => {
            docker.start_container(&id, None).await.map_err(failed)?;
            Ok(id)
        }
        Action::Remove(id) => remove(engine, state_dir, &id).await,
    }
}

/// Launches the container of `operation_id`, or answers the one an earlier order of it made.
async fn launch_once(
    engine: &Engine,
    state_dir: &Path,
    operation_id: &str,
    launch: &Launch,
) -> Result<String, String> {
    let docker = engine.docker();
    let failed = |error: bollard::errors::Error| engine.api_error(error).to_string();
    let label = format!("{OPERATION_LABEL}={operation_id}");
    let filters = HashMap::from([("label".to_owned(), vec![label])]);
    let listed = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(failed)?;
    if let Some(found) = listed.into_iter().find(|container| container.id.is_some()) {
        // Made by an earlier order of this id; an agent that died between creating and starting
        // it left it created.
        let id = found.id.unwrap_or_default();
        if matches!(
            found.state,
            Some(ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::EXITED)
        ) {
            docker.start_container(&id, None).await.map_err(failed)?;
        }
        return Ok(id);
    }
    let bootstrap = write_bootstrap(state_dir, &launch.node_id, &launch.bootstrap)
        .map_err(|error| format!("cannot write the bootstrap: {error}"))?;
    let name = format!("efms-{}", launch.node_id);
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = docker
        .create_container(
            Some(options),
            container_body(operation_id, launch, &bootstrap),
        )
        .await
        .map_err(failed)?;
    if let Err(error) = docker.start_container(&created.id, None).await {
        let words = failed(error);
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(&created.id, Some(options)).await;
        return Err(words);
    }
    Ok(created.id)
}

/// The container of `launch`, its bootstrap mounted from `bootstrap`.
fn container_body(operation_id: &str, launch: &Launch, bootstrap: &Path) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = launch.labels.clone();
    labels.insert(NODE_ID_LABEL.to_owned(), launch.node_id.clone());
    labels.insert(GROUP_LABEL.to_owned(), launch.group.clone());
    labels.insert(OPERATION_LABEL.to_owned(), operation_id.to_owned());
    labels.insert(ADMIN_PORT_LABEL.to_owned(), launch.admin_port.to_string());
    let mut env: Vec<String> = launch
        .env
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.push(format!("ENVOY_ADMIN_PORT={}", launch.admin_port));
    let probe = format!("http://127.0.0.1:{}/ready", launch.admin_port);
    ContainerCreateBody {
        image: Some(launch.image.clone()),
        cmd: Some(vec![
            "-c".into(),
            BOOTSTRAP_IN_CONTAINER.into(),
            "--disable-hot-restart".into(),
        ]),
        env: Some(env),
        labels: Some(labels),
        healthcheck: Some(HealthConfig {
            test: Some(vec![
                "CMD".into(),
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                probe,
            ]),
            interval: Some(2 * SECOND_NANOS),
            timeout: Some(3 * SECOND_NANOS),
            retries: Some(3),
            start_period: Some(10 * SECOND_NANOS),
            start_interval: None,
        }),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            binds: Some(vec![format!(
                "{}:{BOOTSTRAP_IN_CONTAINER}:ro",
                bootstrap.display()
            )]),
            restart_policy: Some(RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            memory: launch
                .memory_bytes
                .and_then(|bytes| i64::try_from(bytes).ok()),
            nano_cpus: launch.cpus.map(|cpus| {
                #[allow(clippy::cast_possible_truncation)]
                let nanos = (cpus * 1e9).round() as i64;
                nanos
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// Stops and removes a container and its bootstrap file; one already gone is done.
async fn remove(engine: &Engine, state_dir: &Path, id: &str) -> Result<String, String> {
    let docker = engine.docker();
    let inspected = match docker.inspect_container(id, None).await {
        Ok(inspected) => inspected,
        Err(error) if is_not_found(&error) => return Ok(id.to_owned()),
        Err(error) => return Err(engine.api_error(error).to_string()),
    };
    let labels = inspected
        .config
        .as_ref()
        .and_then(|config| config.labels.clone())
        .unwrap_or_default();
    // A launched proxy first closes its listeners, so that new connections go to the group's
    // other proxies sharing the port, and is given a moment for the requests under way.
    if let Some(port) = labels
        .get(ADMIN_PORT_LABEL)
        .and_then(|port| port.parse::<u16>().ok())
    {
        match drain_listeners(port).await {
            Ok(()) => tokio::time::sleep(DRAIN_WAIT).await,
            Err(error) => tracing::warn!(%error, container = %id, "could not drain its listeners"),
        }
    }
    let stop = StopContainerOptionsBuilder::new()
        .t(STOP_GRACE_SECONDS)
        .build();
    // A stop lets Envoy end in its grace; the removal forces whatever is left.
    let _ = docker.stop_container(id, Some(stop)).await;
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(error) if is_not_found(&error) => {}
        Err(error) => return Err(engine.api_error(error).to_string()),
    }
    // Only a container this agent launched has a bootstrap of its own to delete.
    if labels.contains_key(OPERATION_LABEL) {
        if let Some(dir) = labels
            .get(NODE_ID_LABEL)
            .and_then(|node_id| bootstrap_dir(state_dir, node_id))
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(id.to_owned())
}

/// Asks the Envoy whose admin interface is on `port` of 127.0.0.1 to close its listeners now
/// (`POST /drain_listeners`).
async fn drain_listeners(port: u16) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "POST /drain_listeners HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        if answer.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
            Err(std::io::Error::other(format!(
                "the admin interface answered `{head}`"
            )))
        }
    };
    tokio::time::timeout(DRAIN_WAIT * 2, exchange)
        .await
        .map_err(|_| std::io::Error::other("the admin interface did not answer"))?
}

/// The directory of `node_id`'s bootstrap, when the node id can name one (one plain component:
/// letters, digits, `.`, `_`, `-`, starting with a letter or digit).
fn bootstrap_dir(state_dir: &Path, node_id: &str) -> Option<PathBuf> {
    let plain = node_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let starts_well = node_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    (plain && starts_well && node_id.len() <= 200).then(|| state_dir.join("proxies").join(node_id))
}

/// Writes the bootstrap of `node_id` in a directory only its owner enters; answers its path.
fn write_bootstrap(state_dir: &Path, node_id: &str, bootstrap: &str) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let dir = bootstrap_dir(state_dir, node_id)
        .ok_or_else(|| std::io::Error::other(format!("`{node_id}` cannot name a file")))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    // The directory keeps others on the host out, whatever it was created as before.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("bootstrap.json");
    let partial = dir.join("bootstrap.json.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)?;
    file.write_all(bootstrap.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_is_kept_in_a_directory_of_its_owner_alone_and_a_node_id_cannot_escape_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("efms-operate-{}", uuid::Uuid::new_v4()));
        let path = write_bootstrap(&dir, "vm-1-edge-1", "{}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        let mode = parent.permissions().mode();
        assert_eq!(mode & 0o077, 0, "group and others enter nothing: {mode:o}");
        for bad in ["../x", "..", "", "/etc", "a/b"] {
            assert!(write_bootstrap(&dir, bad, "{}").is_err(), "{bad}");
            assert!(bootstrap_dir(&dir, bad).is_none(), "{bad}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_launched_container_shares_the_host_network_and_mounts_its_bootstrap_read_only() {
        let launch = Launch {
            node_id: "vm-1-edge-1".into(),
            group: "edge".into(),
            image: "envoy:1".into(),
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            admin_port: 9902,
            bootstrap: "{\"token\":\"secret\"}".into(),
            ..Launch::default()
        };
        let body = container_body("op-1", &launch, Path::new("/state/b.json"));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(
            host.binds.unwrap(),
            ["/state/b.json:/etc/envoy/bootstrap.json:ro"]
        );
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        let labels = body.labels.unwrap();
        assert_eq!(labels[NODE_ID_LABEL], "vm-1-edge-1");
        assert_eq!(labels[OPERATION_LABEL], "op-1");
        let visible = format!("{:?}{:?}", body.env, body.cmd);
        assert!(!visible.contains("secret"), "{visible}");
    }
}
