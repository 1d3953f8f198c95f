//! A rollout whose driver stopped between recording a container's step and asking for the
//! operation it names (a control plane killed at the worst moment) goes on: the next driver asks
//! for the same operation again, and the rollout ends with every container replaced once.

use chrono::Utc;
use efms_commands::fleet::Fleet;
use efms_commands::{CommandBus, CommitBell};
use efms_domain::fleet::rollout::{RolloutCommand, RolloutSpec, RolloutTarget, Step};
use efms_domain::fleet::LaunchSpec;
use efms_tests::agents::{acme_with_ready_vm, carried_out, get, settled, steady_upkeep, BASE};
use efms_tests::docker::Engine;
use efms_tests::fleet::free_port;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrations = "../migrations")]
async fn a_rollout_stopped_between_recording_a_step_and_asking_for_it_goes_on_and_replaces_once(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("ro-e") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let settings = steady_upkeep();
    let app = TestApp::spawn_with_fleet(pool.clone(), settings).await;
    let _agent = acme_with_ready_vm(&app, &engine).await;
    let mut targets = Vec::new();
    for _ in 0..2 {
        let launch = json!({ "group": "edge", "image": engine.image, "admin_port": free_port() });
        let job = carried_out(&app, &format!("{BASE}/vms/vm-a/containers"), &launch).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let asked = &job["operation"]["asked"];
        targets.push(RolloutTarget {
            vm: "vm-a".into(),
            node_id: asked["node_id"].as_str().unwrap().into(),
            container_id: job["operation"]["container_id"].as_str().unwrap().into(),
            launch: serde_json::from_value::<LaunchSpec>(asked["spec"].clone()).unwrap(),
            step: Step::Pending,
        });
    }
    let before: Vec<String> = targets.iter().map(|t| t.container_id.clone()).collect();

    // What a driver had written when it was killed: the rollout, its check passed, and its
    // first container's removal recorded, never asked for.
    let tenant_id: Uuid = sqlx::query_scalar("SELECT tenant_id FROM tenants WHERE slug = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let writer = Fleet::new(
        pool.clone(),
        CommandBus::new(pool.clone(), CommitBell::spawn(&pool)),
    );
    let rollout_id = Uuid::now_v7();
    let first = targets[0].node_id.clone();
    let spec = RolloutSpec {
        group: "edge".into(),
        image: engine.image.clone(),
        max_unavailable: 1,
        health_timeout_ms: 90_000,
        pause_between_ms: 0,
        force: false,
    };
    let commands = [
        RolloutCommand::Start {
            spec,
            targets,
            requested_by: "tester".into(),
        },
        RolloutCommand::Pass {
            envoy_version: "1.40.0".into(),
        },
        RolloutCommand::Advance {
            node_id: first,
            step: Step::Removing {
                operation_id: Uuid::now_v7(),
                at: Utc::now(),
            },
        },
    ];
    for command in commands {
        writer
            .rollout(tenant_id, rollout_id, command, "tester")
            .await
            .unwrap();
    }

    let done = settled(
        &app,
        &format!("{BASE}/groups/edge/rollouts/{rollout_id}"),
        |r| r["state"].is_string() && r["state"] != "running",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let page = get(&app, &format!("{BASE}/containers?group=edge")).await;
    let live: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] != "gone")
        .collect();
    assert_eq!(live.len(), 2, "each container replaced once: {page}");
    for container in live {
        assert!(!before.contains(&container["id"].as_str().unwrap().to_owned()));
        assert_eq!(container["state"], "running", "{container}");
    }
}
