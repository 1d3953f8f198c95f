//! Rollouts through the API, on a real agent and a real Docker engine: a group's containers,
//! launched on Envoy 1.36.4, replaced one at a time by Envoy 1.40.0 containers that keep their
//! node ids and end healthy and SYNCED; traffic through a group of four on two VMs keeps flowing
//! while one is replaced at a time, and the rollout goes on after the control plane restarts; a rollout to an
//! image the engine lacks stops at the first container, naming it and Docker's words, and leaves
//! the others as they were.

use std::time::Duration;

use efms_tests::agents::{
    acme_with_ready_vm, carried_out, get, register, settled, steady_upkeep, RunningAgent, BASE,
};
use efms_tests::docker::{envoy_image, Engine};
use efms_tests::fleet::{
    cluster_to, eventually, free_port, ingress_listener, main_route_to, Behaviour, Upstream,
};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// Launches `count` containers of group `edge` on `vm-a` from `image`; answers their ids.
async fn launched(app: &TestApp, image: &str, count: usize) -> Vec<String> {
    launched_on(app, "vm-a", image, count).await
}

/// Launches `count` containers of group `edge` on `vm` from `image`; answers their ids.
async fn launched_on(app: &TestApp, vm: &str, image: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let launch = json!({ "group": "edge", "image": image, "admin_port": free_port() });
        let job = carried_out(app, &format!("{BASE}/vms/{vm}/containers"), &launch).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        ids.push(
            job["operation"]["container_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        settled(app, &format!("{BASE}/containers/{id}"), |c| {
            c["health"] == "healthy" && c["proxy"]["status"] == "SYNCED"
        })
        .await;
    }
    ids
}

async fn ended(app: &TestApp, rollout: &Value) -> Value {
    let id = rollout["id"].as_str().unwrap();
    settled(app, &format!("{BASE}/groups/edge/rollouts/{id}"), |r| {
        r["state"].is_string() && r["state"] != "running"
    })
    .await
}

fn live_of_group(page: &Value) -> Vec<Value> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] != "gone")
        .cloned()
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rollout_replaces_each_container_by_the_new_envoy_keeping_its_node_id_until_all_sync(
    pool: PgPool,
) {
    let old = envoy_image("1.36.4");
    let Some(engine) = Engine::start("ro-a") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let app = TestApp::spawn_with_fleet(pool, steady_upkeep()).await;
    let _agent = acme_with_ready_vm(&app, &engine).await;
    let before = launched(&app, &old, 2).await;

    for (body, status) in [
        (json!({ "image": engine.image, "max_unavailable": 0 }), 422),
        (json!({ "image": engine.image, "max_unavailable": 3 }), 422),
        (
            json!({ "image": engine.image, "health_timeout": "soon" }),
            422,
        ),
        (json!({ "image": "-bad" }), 422),
    ] {
        let answer = app
            .post(&format!("{BASE}/groups/edge/rollouts"), &body)
            .await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
    }
    let unknown = app
        .post(
            &format!("{BASE}/groups/nope/rollouts"),
            &json!({ "image": engine.image }),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // No proxy of the tenant runs Envoy 1.40.0 yet: refused unless forced.
    let unchecked = app
        .post(
            &format!("{BASE}/groups/edge/rollouts"),
            &json!({ "image": engine.image }),
        )
        .await;
    assert_eq!(unchecked.status, 201, "{}", unchecked.body);
    let refused = ended(&app, &unchecked.body).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    let reason = refused["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("Envoy 1.40.0") && reason.contains("1.36.4") && reason.contains("force"),
        "{reason}"
    );

    let started = app
        .post(
            &format!("{BASE}/groups/edge/rollouts"),
            &json!({ "image": engine.image, "max_unavailable": 1, "health_timeout": "90s",
                "force": true }),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    assert_eq!(started.body["state"], "running");
    let again = app
        .post(
            &format!("{BASE}/groups/edge/rollouts"),
            &json!({ "image": engine.image }),
        )
        .await;
    assert_eq!(
        again.status, 409,
        "one rollout of a group at a time: {}",
        again.body
    );
    let done = ended(&app, &started.body).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["version_check"]["envoy_version"], "1.40.0", "{done}");

    let page = get(&app, &format!("{BASE}/containers?group=edge")).await;
    let live = live_of_group(&page);
    assert_eq!(live.len(), 2, "{page}");
    let mut node_ids: Vec<&str> = live
        .iter()
        .map(|c| c["node_id"].as_str().unwrap())
        .collect();
    node_ids.sort_unstable();
    assert_eq!(
        node_ids,
        ["vm-a-edge-1", "vm-a-edge-2"],
        "node ids are kept"
    );
    for container in &live {
        assert_eq!(container["image"], engine.image.as_str(), "{container}");
        assert!(!before.contains(&container["id"].as_str().unwrap().to_owned()));
        let node = container["node_id"].as_str().unwrap();
        let proxy = get(&app, &format!("{BASE}/proxies/{node}")).await;
        assert_eq!(proxy["status"], "SYNCED", "{proxy}");
        assert!(
            proxy.to_string().contains("1.40.0"),
            "the proxy runs the new Envoy: {proxy}"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rollout_to_an_image_the_engine_lacks_fails_naming_dockers_words_and_replaces_nothing(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("ro-b") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let app = TestApp::spawn_with_fleet(pool, steady_upkeep()).await;
    let _agent = acme_with_ready_vm(&app, &engine).await;
    let before = launched(&app, &engine.image, 2).await;

    let started = app
        .post(
            &format!("{BASE}/groups/edge/rollouts"),
            &json!({ "image": "efms-test/missing:0.0" }),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    let done = ended(&app, &started.body).await;
    assert_eq!(done["state"], "failed", "{done}");
    let failure = &done["failure"];
    assert_eq!(failure["vm"], "vm-a");
    assert!(
        failure["reason"]
            .as_str()
            .unwrap()
            .contains("No such image"),
        "Docker's words: {failure}"
    );
    let first = failure["node_id"].as_str().unwrap();
    let untouched: Vec<&Value> = done["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node_id"] != first)
        .collect();
    assert_eq!(untouched.len(), 1);
    assert_eq!(untouched[0]["progress"]["step"], "pending");
    let kept = untouched[0]["replaced_container_id"].as_str().unwrap();
    assert!(before.contains(&kept.to_owned()));
    let container = get(&app, &format!("{BASE}/containers/{kept}")).await;
    assert_eq!(container["state"], "running", "the rest run as they were");
    let id = done["id"].as_str().unwrap();
    let abort = app
        .post(
            &format!("{BASE}/groups/edge/rollouts/{id}/abort"),
            &json!({}),
        )
        .await;
    assert_eq!(abort.status, 409, "an ended rollout: {}", abort.body);
}

/// Group `edge` serves a listener on a port of its own, routed to an upstream answering `A`;
/// answers the port.
async fn serving(app: &TestApp, upstream: &Upstream) -> u16 {
    let port = free_port();
    let (cluster, route, listener) = (
        cluster_to("a", upstream),
        main_route_to("a"),
        ingress_listener(port),
    );
    for (collection, body) in [
        ("clusters", cluster),
        ("routes", route),
        ("listeners", listener),
    ] {
        let created = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let group = json!({ "name": "edge", "resources": [
        { "kind": "cluster", "name": "upstream" }, { "kind": "cluster", "name": "a" },
        { "kind": "route", "name": "main" }, { "kind": "listener", "name": "ingress" }] });
    let attached = app.put(&format!("{BASE}/groups/edge"), &group, &[]).await;
    assert!(attached.status < 300, "{}", attached.body);
    port
}

/// Requests through `port` until `stop`, a connection each; answers (sent, failed).
fn client_loop(port: u16, stop: tokio::sync::watch::Receiver<bool>) -> JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let (mut sent, mut failed) = (0_u64, 0_u64);
        let url = format!("http://127.0.0.1:{port}/");
        while !*stop.borrow() {
            sent += 1;
            let answer = http.get(&url).send().await;
            let ok = match answer {
                Ok(response) => response.text().await.is_ok_and(|body| body == "A"),
                Err(_) => false,
            };
            if !ok {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sent, failed)
    })
}

#[sqlx::test(migrations = "../migrations")]
async fn traffic_keeps_flowing_through_a_rollout_that_goes_on_after_the_control_plane_restarts(
    pool: PgPool,
) {
    let old = envoy_image("1.36.4");
    let (Some(engine), Some(engine_b)) = (Engine::start("ro-c"), Engine::start("ro-c2")) else {
        return;
    };
    let _emptied = (engine.emptied_after(), engine_b.emptied_after());
    engine_b.remove_all();
    let mut app = TestApp::spawn_with_fleet(pool, steady_upkeep()).await;
    let _agent = acme_with_ready_vm(&app, &engine).await;
    let token_b = register(&app, BASE, "vm-b").await;
    let _agent_b = RunningAgent::start(&app, &token_b, &engine_b);
    settled(&app, &format!("{BASE}/vms/vm-b"), |vm| {
        vm["state"] == "ready"
    })
    .await;
    let upstream = Upstream::start("A", Behaviour::Named).await;
    let port = serving(&app, &upstream).await;
    // A group of four on two VMs (standing on one host here, all four share the port).
    launched_on(&app, "vm-a", &old, 2).await;
    launched_on(&app, "vm-b", &old, 2).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let client = client_loop(port, stopped);
    eventually(
        efms_tests::agents::WAIT,
        "traffic through the group",
        || async { (upstream.hits.load(std::sync::atomic::Ordering::SeqCst) > 20).then_some(()) },
    )
    .await;

    let started = app
        .post(
            &format!("{BASE}/groups/edge/rollouts"),
            &json!({ "image": engine.image, "max_unavailable": 1, "force": true }),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    let id = started.body["id"].as_str().unwrap().to_owned();
    settled(&app, &format!("{BASE}/groups/edge/rollouts/{id}"), |r| {
        r["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["progress"]["step"] == "done")
    })
    .await;
    // The control plane stops mid-rollout and comes back: the rollout goes on from the log.
    app.restart().await;
    let done = ended(&app, &started.body).await;
    stop.send_replace(true);
    let (sent, failed) = client.await.unwrap();
    eprintln!("requests through the group during the rollout: {sent}, failed: {failed}");
    assert_eq!(done["state"], "succeeded", "{done}");
    let page = get(&app, &format!("{BASE}/containers?group=edge")).await;
    let live = live_of_group(&page);
    assert_eq!(live.len(), 4, "{page}");
    assert!(
        live.iter().all(|c| c["image"] == engine.image.as_str()),
        "every container runs the new image: {page}"
    );
    assert!(sent > 100, "the client kept asking: {sent}");
    assert!(
        failed * 1000 < sent,
        "fewer than 0.1 % failed: {failed} of {sent}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rollout_to_an_envoy_that_nacks_the_groups_configuration_stops_after_the_first_container(
    pool: PgPool,
) {
    let older = envoy_image("1.36.4");
    let Some(engine) = Engine::start("ro-d") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let app = TestApp::spawn_with_fleet(pool, steady_upkeep()).await;
    let _agent = acme_with_ready_vm(&app, &engine).await;
    // An HTTP filter Envoy 1.40 has and 1.36 does not: the older one refuses its `@type`.
    let listener = json!({
        "name": "ingress", "address": { "socket_address": { "address": "127.0.0.1", "port_value": free_port() } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "route_config": { "name": "local", "virtual_hosts": [{ "name": "all", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "direct_response": { "status": 200 } }] }] },
                "http_filters": [
                    { "name": "envoy.filters.http.a2a", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.a2a.v3.A2a" } },
                    { "name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }]
    });
    let created = app.post(&format!("{BASE}/listeners"), &listener).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let group = json!({ "name": "edge", "resources": [
        { "kind": "cluster", "name": "upstream" }, { "kind": "listener", "name": "ingress" }] });
    let attached = app.put(&format!("{BASE}/groups/edge"), &group, &[]).await;
    assert!(attached.status < 300, "{}", attached.body);
    let before = launched(&app, &engine.image, 2).await;

    let started = app
        .post(
            &format!("{BASE}/groups/edge/rollouts"),
            &json!({ "image": older, "force": true, "health_timeout": "60s" }),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    let done = ended(&app, &started.body).await;
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("NACK") && reason.contains("a2a"),
        "Envoy's words: {reason}"
    );
    let page = get(&app, &format!("{BASE}/containers?group=edge")).await;
    let live = live_of_group(&page);
    let on_old: Vec<&Value> = live
        .iter()
        .filter(|c| before.contains(&c["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        on_old.len(),
        1,
        "the other container runs as it was: {page}"
    );
    assert_eq!(on_old[0]["image"], engine.image.as_str());
    assert_eq!(on_old[0]["state"], "running");
}
