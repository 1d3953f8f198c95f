//! Real Docker engines standing for VMs, run by the project's scripts: `scripts/dockerd.sh` starts
//! one per name (its own socket, data root and cgroup parent), with the Envoy image
//! `scripts/envoy-image.sh` builds loaded into it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script(name: &str, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    Command::new(root.join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("scripts/{name} runs: {error}"))
}

fn succeeded(name: &str, args: &[&str], output: &Output) -> String {
    assert!(
        output.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Builds (or finds) the local Envoy image of `version` (`scripts/envoy-image.sh`), which the
/// engines started or found from then on load; answers its tag.
pub fn envoy_image(version: &str) -> String {
    let args = [version];
    succeeded("envoy-image.sh", &args, &script("envoy-image.sh", &args))
}

fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Removes every container of its engine when dropped.
pub struct EmptiedAfter<'a>(&'a Engine);

impl Drop for EmptiedAfter<'_> {
    fn drop(&mut self) {
        self.0.remove_all();
    }
}

/// One engine, standing for one VM.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Its name for the script.
    pub name: String,
    /// Its `DOCKER_HOST`.
    pub host: String,
    /// The Envoy image loaded into it.
    pub image: String,
}

impl Engine {
    /// Starts the engine `name` (or finds it running); `None`, saying why, only when Docker
    /// cannot be installed on this machine.
    pub fn start(name: &str) -> Option<Self> {
        let install = script("install-docker.sh", &[]);
        if !install.status.success() {
            eprintln!(
                "SKIPPED: Docker cannot be installed here: {}",
                String::from_utf8_lossy(&install.stderr).trim()
            );
            return None;
        }
        let image = succeeded("envoy-image.sh", &[], &script("envoy-image.sh", &[]));
        let args = ["start", name];
        let host = succeeded("dockerd.sh", &args, &script("dockerd.sh", &args));
        Some(Self {
            name: name.to_owned(),
            host,
            image,
        })
    }

    /// Stops the engine (its containers stop with it), as a VM's Docker daemon that dies would.
    pub fn stop(&self) {
        let args = ["stop", self.name.as_str()];
        succeeded("dockerd.sh", &args, &script("dockerd.sh", &args));
    }

    /// Starts the engine again, at the same address.
    pub fn start_again(&self) {
        let args = ["start", self.name.as_str()];
        let host = succeeded("dockerd.sh", &args, &script("dockerd.sh", &args));
        assert_eq!(host, self.host, "the engine comes back at the same address");
    }

    /// Runs the docker CLI against this engine; its output, trimmed; panics when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let cli = if Path::new("/usr/bin/docker").exists() {
            PathBuf::from("/usr/bin/docker")
        } else {
            PathBuf::from("docker")
        };
        let output = Command::new(cli)
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .expect("the docker CLI runs");
        succeeded("docker", args, &output)
    }

    /// Starts an Envoy container of the proxy `node_id` from `bootstrap` (written to a file and
    /// mounted), on the host's network, labelled with its node id, with `limits` (`docker run`
    /// arguments); its id.
    pub fn run_envoy(
        &self,
        name: &str,
        node_id: &str,
        bootstrap: &serde_json::Value,
        limits: &[&str],
    ) -> String {
        let dir = std::env::temp_dir().join(format!("efms-fleet-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bootstrap.json");
        std::fs::write(&file, bootstrap.to_string()).unwrap();
        let admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
            .as_u64()
            .expect("the bootstrap names its admin port");
        let label = format!("efms.node_id={node_id}");
        let port = format!("ENVOY_ADMIN_PORT={admin}");
        let mount = format!("{}:/etc/envoy/bootstrap.json:ro", file.display());
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
        args.extend_from_slice(limits);
        // Envoys sharing the host's network would share the hot-restart socket.
        args.extend_from_slice(&[
            &self.image,
            "-c",
            "/etc/envoy/bootstrap.json",
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ]);
        self.docker(&args)
    }

    /// Removes every container of the engine, whatever its state (an engine found running
    /// holds those of an earlier run); best effort.
    pub fn remove_all(&self) {
        let listed = Command::new(docker_cli())
            .env("DOCKER_HOST", &self.host)
            .args(["ps", "--all", "--quiet"])
            .output();
        let Ok(listed) = listed else {
            return;
        };
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if !ids.is_empty() {
            self.remove(&ids);
        }
    }

    /// A guard that removes every container of the engine when dropped, so that a test leaves
    /// no Envoy running, even when it fails.
    pub fn emptied_after(&self) -> EmptiedAfter<'_> {
        EmptiedAfter(self)
    }

    /// Removes containers, whatever their state.
    pub fn remove(&self, names: &[&str]) {
        let mut args = vec!["rm", "--force"];
        args.extend_from_slice(names);
        let cli = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let _ = Command::new(cli)
            .env("DOCKER_HOST", &self.host)
            .args(&args)
            .output();
    }
}
