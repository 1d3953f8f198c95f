//! What an operator asks of a VM's Envoy containers: start one for a group, restart, stop, start
//! or remove one. The VM's agent carries it out through the Docker API and reports the outcome;
//! both the request (with who asked) and the outcome are events of the VM's stream.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The first admin port a launch without one is given.
pub const FIRST_ADMIN_PORT: u16 = 9901;
/// The label of a launched container naming its admin port (set by the agent).
pub const ADMIN_PORT_LABEL: &str = "efms.admin_port";

/// The most environment variables or labels a launched container is given.
pub const MAX_LAUNCH_ENTRIES: usize = 64;

/// How an Envoy container of a group is started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The group whose configuration the proxy runs.
    pub group: String,
    /// The image (an Envoy image the engine holds).
    pub image: String,
    /// Its memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// How many CPUs it may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// The port of Envoy's admin interface on the host's 127.0.0.1 (its health check asks it);
    /// in a request, 0: the lowest free from 9901 on the VM.
    pub admin_port: u16,
    /// Environment variables (not for secrets: `docker inspect` shows them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Labels besides `efms.node_id` and `efms.group`, which the agent sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One thing asked of a VM's containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ContainerOperation {
    /// Create and start an Envoy container as proxy `node_id`.
    Launch {
        /// Its proxy's node id (in a request, empty: the lowest free `{vm}-{group}-{n}`).
        node_id: String,
        /// How.
        spec: LaunchSpec,
    },
    /// Restart a container.
    Restart {
        /// Docker's full id.
        container_id: String,
    },
    /// Stop a container (it stays, stopped).
    Stop {
        /// Docker's full id.
        container_id: String,
    },
    /// Start a stopped container.
    Start {
        /// Docker's full id.
        container_id: String,
    },
    /// Stop and remove a container.
    Remove {
        /// Docker's full id.
        container_id: String,
    },
    /// Read the Envoy version of an image (`--version` in a throwaway container).
    Probe {
        /// The image.
        image: String,
    },
}

impl ContainerOperation {
    /// Its name as the API spells it.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Launch { .. } => "launch",
            Self::Restart { .. } => "restart",
            Self::Stop { .. } => "stop",
            Self::Start { .. } => "start",
            Self::Remove { .. } => "remove",
            Self::Probe { .. } => "probe",
        }
    }

    /// The container it acts on; none for a launch.
    pub fn container_id(&self) -> Option<&str> {
        match self {
            Self::Launch { .. } | Self::Probe { .. } => None,
            Self::Restart { container_id }
            | Self::Stop { container_id }
            | Self::Start { container_id }
            | Self::Remove { container_id } => Some(container_id),
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OperationOutcome {
    /// Done: the container it made or acted on.
    Succeeded {
        /// Docker's full id.
        container_id: String,
    },
    /// A probe's answer.
    Probed {
        /// The image's id on the VM's engine.
        image_id: String,
        /// The version its Envoy reports (`1.40.0`).
        envoy_version: String,
    },
    /// Not done, in the engine's (or the control plane's) words.
    Failed {
        /// Why.
        error: String,
    },
}

/// The lowest free node id `{vm}-{group}-{n}` (from 1) among `taken`.
pub fn free_node_id(vm: &str, group: &str, taken: &BTreeSet<&str>) -> String {
    // Of `taken.len() + 1` numbers, one at least is free.
    (1..=taken.len() + 1)
        .map(|n| format!("{vm}-{group}-{n}"))
        .find(|id| !taken.contains(id.as_str()))
        .expect("one of len + 1 ids is free")
}

/// Checks the node id of a launched proxy, which also names its container (`efms-{node_id}`)
/// and its bootstrap's directory: 1 to 200 letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit.
pub fn check_launch_node_id(node_id: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let starts_well = node_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if node_id.len() > 200 || !starts_well || !node_id.chars().all(allowed) {
        return Err(
            "a launched proxy's node id names its container: 1 to 200 letters, digits, `.`, `_` \
             and `-`, starting with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// Checks the parts of a launch that do not depend on the VM: the image reference, a positive
/// memory limit and CPU count, an admin port, and names of environment variables and labels.
/// Answers the field (a JSON pointer below the request) and the problem.
pub fn check_launch(spec: &LaunchSpec) -> Result<(), (&'static str, String)> {
    super::check_image(&spec.image).map_err(|problem| ("/image", problem))?;
    if spec
        .memory_bytes
        .is_some_and(|bytes| bytes < 6 * 1024 * 1024)
    {
        return Err(("/memory", "at least 6 MiB (Docker's minimum)".into()));
    }
    if spec
        .cpus
        .is_some_and(|cpus| !(0.01..=1024.0).contains(&cpus))
    {
        return Err(("/cpus", "a number from 0.01 to 1024".into()));
    }
    if spec.env.len() > MAX_LAUNCH_ENTRIES {
        return Err(("/env", format!("at most {MAX_LAUNCH_ENTRIES} variables")));
    }
    let env_name = |name: &str| {
        !name.is_empty()
            && name.len() <= 255
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for (name, value) in &spec.env {
        if !env_name(name) || value.len() > 4096 || value.contains('\0') {
            return Err((
                "/env",
                format!(
                    "`{name}`: a variable is named by letters, digits and `_` (not starting \
                     with a digit) and its value has at most 4096 bytes and no NUL"
                ),
            ));
        }
    }
    if spec.labels.len() > MAX_LAUNCH_ENTRIES {
        return Err(("/labels", format!("at most {MAX_LAUNCH_ENTRIES} labels")));
    }
    for (key, value) in &spec.labels {
        if key.starts_with("efms.") {
            return Err((
                "/labels",
                format!("`{key}`: labels under `efms.` are set by the agent"),
            ));
        }
        super::check_label(key, value).map_err(|problem| ("/labels", problem))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            group: "edge".into(),
            image: "efms-test/envoy:1.40.0".into(),
            memory_bytes: None,
            cpus: None,
            admin_port: 9901,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn a_launched_node_id_can_name_a_container() {
        assert!(check_launch_node_id("vm-1-edge-1").is_ok());
        for bad in ["", "Bad Id", "-x", "a/b", "../x", &"a".repeat(201)] {
            assert!(check_launch_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_lowest_free_node_id_fills_a_gap() {
        let taken = BTreeSet::from(["vm-1-edge-1", "vm-1-edge-3"]);
        assert_eq!(free_node_id("vm-1", "edge", &taken), "vm-1-edge-2");
        assert_eq!(
            free_node_id("vm-1", "edge", &BTreeSet::new()),
            "vm-1-edge-1"
        );
    }

    type Spoil = fn(&mut LaunchSpec);

    #[test]
    fn a_launch_names_the_field_it_refuses() {
        assert!(check_launch(&spec()).is_ok());
        let cases: [(Spoil, &str); 6] = [
            (|s| s.image = "-bad".into(), "/image"),
            (|s| s.memory_bytes = Some(1024), "/memory"),
            (|s| s.cpus = Some(0.0), "/cpus"),
            (
                |s| s.labels.extend([("k".repeat(64), String::new())]),
                "/labels",
            ),
            (|s| drop(s.env.insert("1X".into(), "v".into())), "/env"),
            (
                |s| drop(s.labels.insert("efms.node_id".into(), "x".into())),
                "/labels",
            ),
        ];
        for (spoil, field) in cases {
            let mut bad = spec();
            spoil(&mut bad);
            assert_eq!(check_launch(&bad).unwrap_err().0, field);
        }
    }

    #[test]
    fn an_operation_is_stored_with_its_action_named() {
        let operation = ContainerOperation::Stop {
            container_id: "abc".into(),
        };
        let json = serde_json::to_value(&operation).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "stop", "container_id": "abc"})
        );
        assert_eq!(
            serde_json::from_value::<ContainerOperation>(json).unwrap(),
            operation
        );
    }
}
