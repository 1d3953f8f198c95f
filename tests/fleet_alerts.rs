//! Alerts on the fleet (NFR-OB-005, ADR 0016) with a real Docker engine and agent: an Envoy
//! container `docker kill`ed fires `container_exited` and `proxy_disconnected`, its agent stopped
//! fires `vm_down`; each is in the event feed beside the lifecycle and state events it follows
//! from, and reaches a webhook.

use std::time::Duration;

use efms_notify::{AlertSettings, WebhookSettings};
use efms_tests::agents::{acme_with_ready_vm, quick_upkeep, settled};
use efms_tests::docker::Engine;
use efms_tests::fleet::{eventually, free_port};
use efms_tests::webhook_receiver::Receiver;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const PATIENCE: Duration = Duration::from_secs(60);

async fn firing(app: &TestApp, subject_prefix: &str, rule: &str) -> Value {
    eventually(PATIENCE, "the alert to fire", || async {
        let answer = app.get(&format!("{BASE}/alerts?state=firing")).await;
        answer.body["items"]
            .as_array()?
            .iter()
            .find(|alert| {
                alert["rule"] == rule
                    && alert["subject"]
                        .as_str()
                        .is_some_and(|subject| subject.starts_with(subject_prefix))
            })
            .cloned()
    })
    .await
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_killed_envoy_container_and_a_stopped_agent_fire_alerts_that_reach_the_feed_and_a_webhook(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("alerts") else {
        panic!("a Docker engine is needed (scripts/install-docker.sh)");
    };
    let app = TestApp::spawn_with_fleet(pool, quick_upkeep()).await;
    app.set_alerts(AlertSettings {
        interval: Duration::from_millis(200),
    });
    app.set_webhooks(WebhookSettings {
        targets: efms_domain::webhooks::TargetPolicy::EVERYWHERE,
        schedule: efms_domain::webhooks::parse_schedule("200ms,500ms").unwrap(),
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(3),
        ..WebhookSettings::default()
    });
    let agent = acme_with_ready_vm(&app, &engine).await;
    let receiver = Receiver::start().await;
    let hook = app
        .post(
            &format!("{BASE}/webhooks"),
            &json!({ "url": receiver.url, "types": ["alert.fired"] }),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    for (name, kind) in [
        ("exited", "container_exited"),
        ("gone", "proxy_disconnected"),
        ("down", "vm_down"),
    ] {
        let rule = app
            .post(
                &format!("{BASE}/alert-rules"),
                &json!({ "name": name, "kind": kind }),
            )
            .await;
        assert_eq!(rule.status, 201, "{}", rule.body);
    }
    let node = "alerts-edge-1";
    let path = format!(
        "{BASE}/groups/edge/bootstrap?node_id={node}&admin_port={}",
        free_port()
    );
    let bootstrap = app.get(&path).await;
    assert_eq!(bootstrap.status, 200, "{}", bootstrap.body);
    engine.run_envoy(node, node, &bootstrap.body, &[]);
    settled(&app, &format!("{BASE}/proxies/{node}"), |proxy| {
        proxy["connected"] == true
    })
    .await;
    assert_eq!(
        app.get(&format!("{BASE}/alerts?state=firing")).await.body["items"],
        json!([]),
        "nothing fires while all runs"
    );

    engine.docker(&["kill", node]);
    let exited = firing(&app, "container/", "exited").await;
    assert!(
        exited["summary"].as_str().unwrap().contains("137"),
        "{exited}"
    );
    let gone = firing(&app, &format!("proxy/{node}"), "gone").await;
    assert!(gone["summary"].as_str().unwrap().contains(node), "{gone}");

    agent.kill();
    let down = firing(&app, "vm/vm-a", "down").await;
    assert!(down["summary"].as_str().unwrap().contains("vm-a"), "{down}");

    // In the feed, after what they follow from.
    let feed = eventually(PATIENCE, "the feed to show them", || async {
        let answer = app
            .get(&format!(
                "{BASE}/events?types=container.lifecycle,vm.state,alert.fired&limit=500"
            ))
            .await;
        let items = answer.body["items"].as_array()?.clone();
        let fired = items.iter().filter(|e| e["type"] == "alert.fired").count();
        (fired >= 3).then_some(items)
    })
    .await;
    let position = |wanted: &dyn Fn(&Value) -> bool| feed.iter().position(wanted);
    let died = position(&|e| e["type"] == "container.lifecycle" && e["payload"]["action"] == "die")
        .expect("the container's death in the feed");
    let alerted = position(&|e| e["type"] == "alert.fired" && e["payload"]["rule"] == "exited")
        .expect("the alert in the feed");
    assert!(died < alerted, "{feed:?}");
    assert!(
        feed.iter()
            .any(|e| e["type"] == "vm.state" && e["payload"]["to"] == "down"),
        "{feed:?}"
    );
    let delivered = eventually(PATIENCE, "the alerts at the webhook", || async {
        let rules: Vec<String> = receiver
            .received()
            .iter()
            .filter_map(|r| Some(r.json()["data"]["rule"].as_str()?.to_owned()))
            .collect();
        (rules.len() >= 3).then_some(rules)
    })
    .await;
    for rule in ["exited", "gone", "down"] {
        assert!(delivered.iter().any(|r| r == rule), "{rule}: {delivered:?}");
    }
}
