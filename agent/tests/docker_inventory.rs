//! The inventory of a real Docker engine: the Envoy containers, their limits, health and usage.

mod support;

use efms_agent::inventory::{self, ContainerState, Health, Watch};
use efms_agent::stats::{self, CgroupVersion};
use efms_agent::Engine;
use support::{TestEngine, PATIENCE};

/// The engine the tests that leave it running share.
const ENGINE: &str = "agent";

#[tokio::test]
async fn an_envoy_container_labelled_with_its_node_id_is_listed_with_its_limits_and_health() {
    let Some(test_engine) = TestEngine::start(ENGINE) else {
        return;
    };
    let envoy = support::unique("edge");
    let other = support::unique("other");
    let id = test_engine.run_envoy(
        &envoy,
        &envoy,
        &[
            "--memory",
            "128m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "200",
            "--label",
            "team=web",
        ],
    );
    // Same image, no label: reported only when the VM watches the image.
    let other_id = test_engine.docker(&[
        "run",
        "--detach",
        "--name",
        &other,
        "--network",
        "none",
        "--entrypoint",
        "/bin/sleep",
        &test_engine.image,
        "600",
    ]);
    let engine = Engine::connect(Some(&test_engine.host)).await.unwrap();

    let healthy = tokio::time::timeout(PATIENCE, async {
        loop {
            let container = inventory::inspect(&engine, &id).await.unwrap().unwrap();
            if container.health == Health::Healthy {
                return container;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the Envoy container turns healthy");
    assert_eq!(healthy.state, ContainerState::Running);

    let listed = inventory::list(&engine, &Watch::default()).await.unwrap();
    let container = listed
        .iter()
        .find(|container| container.id == id)
        .expect("the labelled container is listed");
    assert!(!listed.iter().any(|container| container.name == other));
    assert_eq!(container.name, envoy);
    assert_eq!(container.node_id.as_deref(), Some(envoy.as_str()));
    assert_eq!(container.image, test_engine.image);
    assert_eq!(container.state, ContainerState::Running);
    assert_eq!(container.health, Health::Healthy);
    assert_eq!(container.limits.memory_bytes, Some(128 << 20));
    assert_eq!(container.limits.cpus, Some(0.5));
    assert_eq!(container.limits.pids, Some(200));
    assert_eq!(
        container.labels.get("team").map(String::as_str),
        Some("web")
    );
    assert_eq!(container.exit_code, None);
    assert!(!container.oom_killed);
    assert!(container.started_at.is_some());

    let repository = test_engine.image.split(':').next().unwrap().to_owned();
    let watching = Watch {
        images: vec![repository],
    };
    let with_image = inventory::list(&engine, &watching).await.unwrap();
    assert!(with_image.iter().any(|container| container.name == other));

    let usage = stats::usage(&engine, &id)
        .await
        .unwrap()
        .expect("a running container has usage");
    assert!(usage.memory_used_bytes > 0);
    assert_eq!(usage.memory_limit_bytes, Some(128 << 20));
    assert!(usage.cpu_percent >= 0.0);
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let expected = if unified {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    };
    assert_eq!(usage.cgroup, expected);
    let each = stats::usage_of_each(&engine, &[id.clone(), other_id], 2).await;
    assert_eq!(each.len(), 2);
    assert!(each.iter().all(|usage| matches!(usage, Ok(Some(_)))));

    test_engine.remove(&[&envoy, &other]);
    assert_eq!(inventory::inspect(&engine, &id).await.unwrap(), None);
}

#[tokio::test]
async fn the_api_version_is_negotiated_down_to_the_engines() {
    let Some(test_engine) = TestEngine::start(ENGINE) else {
        return;
    };
    let engine = Engine::connect(Some(&test_engine.host)).await.unwrap();
    let version = engine.version().await.unwrap();
    assert_eq!(
        version.version,
        test_engine.docker(&["version", "--format", "{{.Server.Version}}"])
    );
    let number = |text: &str| -> (u32, u32) {
        let (major, minor) = text.split_once('.').unwrap();
        (major.parse().unwrap(), minor.parse().unwrap())
    };
    assert!(number(&version.negotiated_api_version) <= number(&version.api_version));
}
