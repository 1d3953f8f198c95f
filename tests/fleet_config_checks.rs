//! What the agents find in their proxies' admin `config_dump`s, on a real agent, a real Docker
//! engine and real Envoys: a launched proxy's dump agrees with what it ACKed; a container of the
//! same node running a hand-made bootstrap turns the proxy DIVERGED (in `/drift`, in its group's
//! health, naming the container and both versions) until it is gone.

use std::time::Duration;

use efms_tests::agents::{
    acme_with_ready_vm_where, carried_out, get, settled, steady_upkeep, BASE,
};
use efms_tests::docker::Engine;
use efms_tests::fleet::{drift, eventually, free_port};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(60);

/// A bootstrap of node `edge-1` with a cluster of its own and no management server at all.
fn hand_made_bootstrap(admin_port: u16) -> Value {
    json!({
        "node": { "id": "edge-1", "cluster": "edge" },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
        "static_resources": { "clusters": [{
            "name": "elsewhere", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": { "cluster_name": "elsewhere", "endpoints": [{ "lb_endpoints": [{
                "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] }
        }] }
    })
}

#[sqlx::test(migrations = "../migrations")]
async fn a_container_holding_another_configuration_than_its_proxy_accepted_turns_it_diverged_until_it_goes(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("cc-a") else {
        return;
    };
    let _emptied = engine.emptied_after();
    let settings = steady_upkeep();
    let app = TestApp::spawn_with_fleet(pool, settings).await;
    let _agent = acme_with_ready_vm_where(&app, &engine, |link| {
        link.config_check_interval = Duration::from_secs(1);
    })
    .await;
    let launch = json!({ "group": "edge", "image": engine.image, "node_id": "edge-1",
        "admin_port": free_port() });
    let job = carried_out(&app, &format!("{BASE}/vms/vm-a/containers"), &launch).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["operation"]["container_id"]
        .as_str()
        .unwrap()
        .to_owned();
    settled(&app, &format!("{BASE}/containers/{id}"), |c| {
        c["health"] == "healthy" && c["proxy"]["status"] == "SYNCED"
    })
    .await;

    // The launched proxy's dump holds what it accepted.
    let proxy = settled(&app, &format!("{BASE}/proxies/edge-1"), |p| {
        p["config_check"]["agrees"] == true
    })
    .await;
    assert!(proxy["config_check"]["diverged"].is_null(), "{proxy}");
    assert!(drift(&app, BASE).await.is_empty());

    // A container of the same node, run by hand with a bootstrap of its own.
    let rogue_port = free_port();
    let label = format!("efms.admin_port={rogue_port}");
    let rogue = engine.run_envoy(
        "rogue",
        "edge-1",
        &hand_made_bootstrap(rogue_port),
        &["--label", &label],
    );
    let why = eventually(PATIENCE, "edge-1 diverged", || async {
        drift(&app, BASE)
            .await
            .into_iter()
            .find(|(node, state, _)| node == "edge-1" && state == "DIVERGED")
            .map(|(_, _, why)| why)
    })
    .await;
    assert!(
        why.contains(&rogue[..12]),
        "the rogue container is named: {why}"
    );
    assert!(why.contains("cluster version none"), "{why}");
    assert!(
        !why.contains(&id[..12]),
        "the launched container agrees: {why}"
    );
    let health = get(&app, &format!("{BASE}/groups/edge/health")).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["proxies"]["diverged"], 1, "{health}");
    let named = health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|reason| reason["subject"] == "proxy/edge-1");
    assert!(named, "{health}");
    let proxy = get(&app, &format!("{BASE}/proxies/edge-1")).await;
    assert_eq!(proxy["config_check"]["agrees"], false, "{proxy}");
    assert!(
        proxy["config_check"]["diverged_since"].is_string(),
        "{proxy}"
    );

    // Once it is gone, the next check agrees again.
    engine.remove(&["rogue"]);
    eventually(PATIENCE, "edge-1 in sync again", || async {
        drift(&app, BASE).await.is_empty().then_some(())
    })
    .await;
    let proxy = get(&app, &format!("{BASE}/proxies/edge-1")).await;
    assert_eq!(proxy["config_check"]["agrees"], true, "{proxy}");
}
