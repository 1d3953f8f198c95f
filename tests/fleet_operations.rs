//! Operations on Envoy containers through the API, carried out by a real agent on a real Docker
//! engine: a container launched for a group becomes healthy and SYNCED; restart, stop, start and
//! removal each end their job and show in the container's history; a VM whose agent is down
//! refuses, an unknown image fails in the engine's words, bad input changes nothing.

use std::time::Duration;

use efms_commands::fleet::upkeep::UpkeepSettings;
use efms_tests::agents::{acme_with_ready_vm, carried_out, get, job_end, settled, BASE};
use efms_tests::docker::Engine;
use efms_tests::fleet::free_port;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

fn settings() -> UpkeepSettings {
    UpkeepSettings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_grace: Duration::from_secs(2),
        ..UpkeepSettings::default()
    }
}

fn changes(events: &Value) -> Vec<String> {
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["change"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_launched_container_syncs_and_obeys_restart_stop_start_and_removal(pool: PgPool) {
    let Some(engine) = Engine::start("ops-a") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let app = TestApp::spawn_with_fleet(pool, settings()).await;
    let _agent = acme_with_ready_vm(&app, &engine).await;

    let launch = json!({ "group": "edge", "image": engine.image, "memory": "128m",
        "cpus": 0.5, "admin_port": free_port(), "labels": { "team": "edge" } });
    let answer = app
        .post(&format!("{BASE}/vms/vm-a/containers"), &launch)
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // The job as it stands when answered: an agent quick enough may have finished it already.
    assert!(
        matches!(answer.body["state"].as_str(), Some("running" | "succeeded")),
        "{}",
        answer.body
    );
    assert_eq!(answer.body["operation"]["node_id"], "vm-a-edge-1");
    assert!(answer.headers.get("location").is_some());
    let launched = job_end(&app, &answer.body).await;
    assert_eq!(launched["state"], "succeeded", "{launched}");
    let id = launched["operation"]["container_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let container = settled(&app, &format!("{BASE}/containers/{id}"), |c| {
        c["state"] == "running" && c["health"] == "healthy" && c["proxy"]["status"] == "SYNCED"
    })
    .await;
    assert_eq!(container["node_id"], "vm-a-edge-1");
    assert_eq!(
        container["limits"]["memory_bytes"],
        128 << 20,
        "{container}"
    );
    assert_eq!(container["labels"]["efms.group"], "edge");
    app.create_tenant("other", "Other").await;
    let foreign = app
        .post(
            &format!("/api/v1/tenants/other/containers/{id}/stop"),
            &json!({}),
        )
        .await;
    assert_eq!(
        foreign.status, 404,
        "another tenant's container: {}",
        foreign.body
    );
    let inspected = engine.docker(&["inspect", &id]);
    assert!(
        !inspected.contains("Bearer"),
        "the proxy's token is in no environment or command line"
    );

    let stopped = carried_out(&app, &format!("{BASE}/containers/{id}/stop"), &json!({})).await;
    assert_eq!(stopped["state"], "succeeded", "{stopped}");
    settled(&app, &format!("{BASE}/containers/{id}"), |c| {
        c["state"] == "exited"
    })
    .await;
    let started = carried_out(&app, &format!("{BASE}/containers/{id}/start"), &json!({})).await;
    assert_eq!(started["state"], "succeeded", "{started}");
    settled(&app, &format!("{BASE}/containers/{id}"), |c| {
        c["state"] == "running"
    })
    .await;
    let restarted = carried_out(
        &app,
        &format!("{BASE}/containers/{}/restart", &id[..12]),
        &json!({}),
    )
    .await;
    assert_eq!(restarted["state"], "succeeded", "{restarted}");
    settled(&app, &format!("{BASE}/containers/{id}/events"), |events| {
        changes(events).iter().any(|change| change == "restart")
    })
    .await;

    let removal = app
        .send(
            reqwest::Method::DELETE,
            &format!("{BASE}/containers/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(removal.status, 202, "{}", removal.body);
    let removed = job_end(&app, &removal.body).await;
    assert_eq!(removed["state"], "succeeded", "{removed}");
    settled(&app, &format!("{BASE}/containers/{id}"), |c| {
        c["state"] == "gone"
    })
    .await;
    // The removed proxy's token does not outlive its container.
    let tokens = settled(&app, &format!("{BASE}/proxy-tokens"), |page| {
        page["items"].as_array().is_some_and(|items| {
            items.iter().any(|t| t["node_id"] == "vm-a-edge-1")
                && items
                    .iter()
                    .filter(|t| t["node_id"] == "vm-a-edge-1")
                    .all(|t| t["state"] == "revoked")
        })
    })
    .await;
    assert!(
        tokens.to_string().contains("container was removed"),
        "{tokens}"
    );
    let history = get(&app, &format!("{BASE}/vms/vm-a/history")).await;
    let text = history.to_string();
    for kind in ["ContainerOperationRequested", "ContainerOperationFinished"] {
        assert_eq!(
            text.matches(kind).count(),
            5,
            "five operations, each asked and ended: {history}"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_operations_are_refused_an_unknown_image_fails_in_dockers_words_and_a_silent_vm_refuses(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("ops-b") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let app = TestApp::spawn_with_fleet(pool, settings()).await;
    let agent = acme_with_ready_vm(&app, &engine).await;
    let launches = format!("{BASE}/vms/vm-a/containers");

    for (body, status, pointer) in [
        (json!({ "group": "nope", "image": "envoy:1" }), 404, None),
        (
            json!({ "group": "edge", "image": "envoy:1", "node_id": "Bad Id" }),
            422,
            Some("/node_id"),
        ),
        (
            json!({ "group": "edge", "image": "envoy:1", "memory": "lots" }),
            422,
            Some("/memory"),
        ),
        (
            json!({ "group": "edge", "image": "-x", "cpus": 0 }),
            422,
            Some("/image"),
        ),
        (
            json!({ "group": "edge", "image": "envoy:1", "extra": 1 }),
            422,
            None,
        ),
    ] {
        let answer = app.post(&launches, &body).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        if let Some(pointer) = pointer {
            assert!(answer.body.to_string().contains(pointer), "{}", answer.body);
        }
    }
    let elsewhere = app
        .post(
            &format!("{BASE}/vms/nowhere/containers"),
            &json!({ "group": "edge", "image": "envoy:1" }),
        )
        .await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.body);
    let unknown = app
        .post(
            &format!("{BASE}/containers/{}/stop", "a".repeat(64)),
            &json!({}),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let jobs = get(&app, &format!("{BASE}/vms/vm-a/history")).await;
    assert!(
        !jobs.to_string().contains("ContainerOperationRequested"),
        "nothing refused was recorded: {jobs}"
    );

    let failed = carried_out(
        &app,
        &launches,
        &json!({ "group": "edge", "image": "efms-test/missing:0.0" }),
    )
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let detail = failed["problem"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("No such image"), "Docker's words: {failed}");

    agent.kill();
    settled(&app, &format!("{BASE}/vms/vm-a"), |vm| {
        vm["state"] == "down"
    })
    .await;
    let refused = app
        .post(
            &launches,
            &json!({ "group": "edge", "image": engine.image }),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
}
