//! The fleet end to end (ADR 0011): two real Docker engines stand for two VMs, each with its own
//! agent (`efms_agent::link`, as `efms agent` runs it) connected to a real control plane; real
//! Envoy containers started from their group's bootstrap, serving traffic that follows a route
//! change; a container killed, an agent killed, an engine restarted, a VM removed.

use std::time::{Duration, Instant};

use efms_commands::fleet::upkeep::UpkeepSettings;
use efms_tests::agents::{get, register, settled, RunningAgent, WAIT};
use efms_tests::docker::Engine;
use efms_tests::fleet::{
    cluster_to, eventually, free_port, ingress_listener, main_route_to, Behaviour, Upstream,
};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
async fn bootstrap(app: &TestApp, node_id: &str) -> Value {
    let path = format!(
        "{BASE}/groups/edge/bootstrap?node_id={node_id}&admin_port={}",
        free_port()
    );
    let answer = app.get(&path).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The group's Envoys serve a listener whose route leads to upstream A; the route is changed to
/// B, and the traffic through the containers follows.
async fn traffic_follows_a_route_change(app: &TestApp) {
    let a = Upstream::start("A", Behaviour::Named).await;
    let b = Upstream::start("B", Behaviour::Named).await;
    let port = free_port();
    let listener = ingress_listener(port);
    for (collection, body) in [
        ("clusters", cluster_to("a", &a)),
        ("clusters", cluster_to("b", &b)),
        ("routes", main_route_to("a")),
        ("listeners", listener),
    ] {
        let created = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let group = json!({ "name": "edge", "resources": [
        { "kind": "cluster", "name": "upstream" }, { "kind": "cluster", "name": "a" },
        { "kind": "cluster", "name": "b" }, { "kind": "route", "name": "main" },
        { "kind": "listener", "name": "ingress" }] });
    let attached = app.put(&format!("{BASE}/groups/edge"), &group, &[]).await;
    assert_eq!(attached.status, 200, "{}", attached.body);
    // A connection per request, so that both VMs' Envoys (sharing the port) answer in turn.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answer_is = |expected: &'static str| {
        let http = http.clone();
        async move {
            let url = format!("http://127.0.0.1:{port}/");
            eventually(
                WAIT,
                &format!("{url} answering {expected} 20 times running"),
                || async {
                    for _ in 0..20 {
                        let response = http.get(&url).send().await.ok()?;
                        if response.text().await.ok()? != expected {
                            return None;
                        }
                    }
                    Some(())
                },
            )
            .await;
        }
    };
    answer_is("A").await;
    let changed = app
        .put(&format!("{BASE}/routes/main"), &main_route_to("b"), &[])
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    answer_is("B").await;
    for node in ["fleet-a-edge-1", "fleet-b-edge-1"] {
        settled(app, &format!("{BASE}/proxies/{node}"), |proxy| {
            proxy["status"] == "SYNCED"
        })
        .await;
    }
}

fn containers_of(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

#[sqlx::test(migrations = "../migrations")]
async fn two_vms_report_their_envoys_which_sync_and_their_deaths_silences_and_removal_are_told(
    pool: PgPool,
) {
    let (Some(engine_a), Some(engine_b)) = (Engine::start("fleet-a"), Engine::start("fleet-b"))
    else {
        return;
    };
    let names = ["fleet-a-edge-1", "fleet-b-edge-1", "fleet-b-edge-2"];
    for engine in [&engine_a, &engine_b] {
        engine.remove(&names);
    }
    let settings = UpkeepSettings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_grace: Duration::from_secs(2),
        ..UpkeepSettings::default()
    };
    let app = TestApp::spawn_with_fleet(pool, settings).await;
    app.create_tenant("acme", "Acme").await;
    let cluster = json!({
        "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "upstream", "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] }
    });
    assert_eq!(
        app.post(&format!("{BASE}/clusters"), &cluster).await.status,
        201
    );
    let group = json!({ "name": "edge", "resources": [{ "kind": "cluster", "name": "upstream" }] });
    assert_eq!(
        app.post(&format!("{BASE}/groups"), &group).await.status,
        201
    );
    let token_a = register(&app, BASE, "vm-a").await;
    let token_b = register(&app, BASE, "vm-b").await;
    let agent_a = RunningAgent::start(&app, &token_a, &engine_a);
    let mut agent_b = RunningAgent::start(&app, &token_b, &engine_b);

    // Both VMs ready, with their facts and utilisation.
    for vm in ["vm-a", "vm-b"] {
        let body = settled(&app, &format!("{BASE}/vms/{vm}"), |vm| {
            vm["state"] == "ready" && vm["utilisation"]["cpu_percent"].is_number()
        })
        .await;
        assert!(body["facts"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty()));
        assert!(body["facts"]["cpu_count"].as_u64().unwrap() >= 1);
        assert!(body["facts"]["docker"]["version"].is_string(), "{body}");
    }

    // An Envoy on each, from its group's bootstrap: listed with its limits and health, SYNCED.
    let limits = ["--memory", "256m", "--cpus", "0.5"];
    let on_a = engine_a.run_envoy(
        names[0],
        names[0],
        &bootstrap(&app, names[0]).await,
        &limits,
    );
    engine_b.run_envoy(
        names[1],
        names[1],
        &bootstrap(&app, names[1]).await,
        &limits,
    );
    for (vm, node) in [("vm-a", names[0]), ("vm-b", names[1])] {
        let page = settled(
            &app,
            &format!("{BASE}/containers?vm={vm}&health=healthy"),
            |page| containers_of(page).iter().any(|c| c["node_id"] == node),
        )
        .await;
        let container = containers_of(&page)
            .into_iter()
            .find(|c| c["node_id"] == node)
            .unwrap();
        assert_eq!(container["limits"]["memory_bytes"], 256 << 20);
        assert_eq!(container["limits"]["cpus"], 0.5);
        let id = container["id"].as_str().unwrap().to_owned();
        settled(&app, &format!("{BASE}/containers/{id}"), |c| {
            c["proxy"]["status"] == "SYNCED"
        })
        .await;
        let proxy = get(&app, &format!("{BASE}/proxies/{node}")).await;
        assert_eq!(proxy["container"]["vm"], vm, "{proxy}");
    }
    traffic_follows_a_route_change(&app).await;

    // docker kill: its die (exit code 137), the container exited, its proxy disconnected.
    let killed_at = Instant::now();
    engine_a.docker(&["kill", names[0]]);
    let dead = settled(&app, &format!("{BASE}/containers/{on_a}"), |c| {
        c["state"] == "exited"
    })
    .await;
    eprintln!(
        "docker kill to the container shown exited through the API: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(dead["exit_code"], 137);
    let events = get(&app, &format!("{BASE}/containers/{on_a}/events")).await;
    let die: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["change"] == "die")
        .collect();
    assert_eq!(die.len(), 1, "one die: {events}");
    assert_eq!(die[0]["exit_code"], 137);
    settled(&app, &format!("{BASE}/proxies/{}", names[0]), |p| {
        p["connected"] == false
    })
    .await;

    // Agent killed: the VM turns down; a container started meanwhile shows up once it is back.
    agent_b.kill();
    settled(&app, &format!("{BASE}/vms/vm-b"), |vm| {
        vm["state"] == "down"
    })
    .await;
    let away = engine_b.run_envoy(names[2], names[2], &bootstrap(&app, names[2]).await, &[]);
    agent_b = RunningAgent::start(&app, &token_b, &engine_b);
    settled(&app, &format!("{BASE}/vms/vm-b"), |vm| {
        vm["state"] == "ready"
    })
    .await;
    settled(&app, &format!("{BASE}/containers/{away}"), |c| {
        c["state"] == "running"
    })
    .await;
    let history = get(&app, &format!("{BASE}/vms/vm-b/history")).await;
    let states: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "VmStateChanged")
        .map(|e| e["event"]["to"].as_str().unwrap())
        .collect();
    assert!(
        states.windows(2).any(|w| w == ["down", "ready"]),
        "down then ready again: {states:?}"
    );

    // The engine restarted: the VM is `docker_unreachable` while it is away, the agent catches up
    // once it is back, and the containers the restart stopped are shown exited.
    engine_b.stop();
    settled(&app, &format!("{BASE}/vms/vm-b"), |vm| {
        vm["state"] == "docker_unreachable"
    })
    .await;
    engine_b.start_again();
    settled(&app, &format!("{BASE}/vms/vm-b"), |vm| {
        vm["state"] == "ready"
    })
    .await;
    settled(&app, &format!("{BASE}/containers/{away}"), |c| {
        c["state"] == "exited"
    })
    .await;

    // DELETE: the agent's stream is cut and its token refused; the history stays.
    let removed = app
        .send(
            reqwest::Method::DELETE,
            &format!("{BASE}/vms/vm-a"),
            None,
            &[],
        )
        .await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    settled(&app, &format!("{BASE}/vms/vm-a"), |vm| {
        vm["state"] == "removed" && vm["connected"] == false
    })
    .await;
    let history = get(&app, &format!("{BASE}/vms/vm-a/history")).await;
    assert!(history["items"].as_array().unwrap().len() > 3);

    agent_a.kill();
    agent_b.kill();
    for engine in [&engine_a, &engine_b] {
        engine.remove(&names);
    }
}
