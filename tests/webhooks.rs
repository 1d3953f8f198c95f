//! Webhooks (API-WH-001…003, ADR 0015): every delivery signed as Standard Webhooks (checked by an
//! implementation of its own), a failing receiver tried again with growing gaps and every attempt
//! recorded, 410 disabling the endpoint, a rotated secret signing beside the new one, bad targets
//! refused naming the field, and no event lost when the sender is killed mid-burst.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use efms_notify::WebhookSettings;
use efms_tests::fleet::eventually;
use efms_tests::webhook_receiver::{Received, Receiver, Redirector};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const PATIENCE: Duration = Duration::from_secs(60);

fn cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] } })
}

/// Short gaps between attempts, and loopback receivers allowed.
fn quick(schedule: &str) -> WebhookSettings {
    WebhookSettings {
        targets: efms_domain::webhooks::TargetPolicy::EVERYWHERE,
        schedule: efms_domain::webhooks::parse_schedule(schedule).unwrap(),
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(3),
        ..WebhookSettings::default()
    }
}

/// Creates a webhook of `commit` events to `url`: its id and secret.
async fn subscribe(app: &TestApp, url: &str) -> (String, String) {
    let answer = app
        .post(
            &format!("{BASE}/webhooks"),
            &json!({ "url": url, "types": ["commit"], "description": "ci" }),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let secret = answer.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (answer.body["id"].as_str().unwrap().to_owned(), secret)
}

async fn commit(app: &TestApp, name: &str) {
    let answer = app
        .put(&format!("{BASE}/clusters/{name}"), &cluster(name), &[])
        .await;
    assert!(
        answer.status == 201 || answer.status == 200,
        "{}",
        answer.body
    );
}

/// Checks a delivery's signature with the Standard Webhooks implementation.
fn verify(secret: &str, received: &Received) {
    let verifier = standardwebhooks::Webhook::new(secret).expect("the secret reads");
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, received.header(name).parse().unwrap());
    }
    verifier
        .verify(&received.body, &headers)
        .unwrap_or_else(|error| {
            panic!("signature of {}: {error:?}", received.header("webhook-id"))
        });
}

async fn wait_for(receiver: &Receiver, count: usize) -> Vec<Received> {
    eventually(PATIENCE, "the deliveries", || async {
        let deliveries = receiver.received();
        (deliveries.len() >= count).then_some(deliveries)
    })
    .await
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_failing_receiver_gets_four_signed_attempts_with_growing_gaps_all_recorded(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.set_webhooks(quick("300ms,900ms,2s"));
    app.create_tenant("acme", "Acme").await;
    let receiver = Receiver::start().await;
    receiver.answer_with(&[500, 500, 500]);
    let (id, secret) = subscribe(&app, &receiver.url).await;
    commit(&app, "backend").await;
    let received = wait_for(&receiver, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver
        .received()
        .into_iter()
        .take(received.len())
        .collect::<Vec<_>>();
    assert_eq!(received.len(), 4, "no attempt after the 2xx");
    assert_eq!(
        received.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    for attempt in &received {
        verify(&secret, attempt);
    }
    let ids: BTreeSet<String> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "one webhook-id across the retries: {ids:?}");
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.windows(2).all(|pair| pair[1] > pair[0]),
        "the gaps grow: {gaps:?}"
    );
    let body = received[3].json();
    assert_eq!(body["type"], "commit");
    assert_eq!(body["data"]["changes"][0]["name"], "backend");
    assert!(body["cursor"].is_string());

    let deliveries = app.get(&format!("{BASE}/webhooks/{id}/deliveries")).await;
    assert_eq!(deliveries.status, 200, "{}", deliveries.body);
    let delivery = &deliveries.body["items"][0];
    assert_eq!(delivery["state"], "delivered");
    assert_eq!(delivery["attempts"], 4);
    assert_eq!(
        delivery["message_id"].as_str().unwrap(),
        ids.first().unwrap()
    );
    let history = delivery["history"].as_array().unwrap();
    let statuses: Vec<i64> = history
        .iter()
        .map(|attempt| attempt["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    assert!(history[..3]
        .iter()
        .all(|attempt| attempt["next_attempt_at"].is_string()));
    assert_eq!(history[0]["response_excerpt"], "received");
    let webhook = app.get(&format!("{BASE}/webhooks/{id}")).await;
    assert_eq!(webhook.body["enabled"], true);
    assert!(
        webhook.body.get("failing_since").is_none(),
        "{}",
        webhook.body
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_endpoint_that_answers_410_is_disabled_and_saying_why(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.set_webhooks(quick("200ms"));
    app.create_tenant("acme", "Acme").await;
    let receiver = Receiver::start().await;
    receiver.answer_with(&[410]);
    let (id, _) = subscribe(&app, &receiver.url).await;
    commit(&app, "a").await;
    wait_for(&receiver, 1).await;
    let webhook = eventually(PATIENCE, "the webhook disabled", || async {
        let webhook = app.get(&format!("{BASE}/webhooks/{id}")).await.body;
        (webhook["enabled"] == false).then_some(webhook)
    })
    .await;
    assert!(
        webhook["disabled_reason"].as_str().unwrap().contains("410"),
        "{webhook}"
    );
    commit(&app, "b").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1, "nothing more is sent to it");
    // Enabled again, it receives what was committed meanwhile.
    let enabled = app
        .send(
            reqwest::Method::PATCH,
            &format!("{BASE}/webhooks/{id}"),
            Some(("application/json", &json!({ "enabled": true }))),
            &[],
        )
        .await;
    assert_eq!(enabled.status, 200, "{}", enabled.body);
    let received = wait_for(&receiver, 2).await;
    assert_eq!(received[1].json()["data"]["changes"][0]["name"], "b");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_rotated_secret_signs_beside_the_new_one_and_retry_after_is_honoured(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.set_webhooks(quick("100ms,100ms"));
    app.create_tenant("acme", "Acme").await;
    let receiver = Receiver::start().await;
    let (id, old) = subscribe(&app, &receiver.url).await;
    let rotated = app
        .post(&format!("{BASE}/webhooks/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    receiver.answer_once_with(503, &[("retry-after", "2")]);
    commit(&app, "a").await;
    let received = wait_for(&receiver, 2).await;
    assert_eq!(
        received[1].header("webhook-signature").split(' ').count(),
        2
    );
    for secret in [&old, &new] {
        verify(secret, &received[1]);
    }
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(1_900),
        "Retry-After of 2 s honoured: {gap:?}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn bad_webhooks_are_refused_naming_the_field_and_nothing_is_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let refused = |body: Value, pointer: &'static str| {
        let app = &app;
        async move {
            let answer = app.post(&format!("{BASE}/webhooks"), &body).await;
            assert_eq!(answer.status, 422, "{body}: {}", answer.body);
            let pointers: Vec<&str> = answer.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|error| error["pointer"].as_str())
                .collect();
            assert!(pointers.contains(&pointer), "{body}: {}", answer.body);
        }
    };
    refused(
        json!({ "url": "ftp://hooks.example/x", "types": ["commit"] }),
        "/url",
    )
    .await;
    refused(json!({ "url": "not a url", "types": ["commit"] }), "/url").await;
    // Private targets are refused unless the installation allows them.
    refused(
        json!({ "url": "http://127.0.0.1:9/hook", "types": ["commit"] }),
        "/url",
    )
    .await;
    refused(
        json!({ "url": "http://10.0.0.8/hook", "types": ["commit"] }),
        "/url",
    )
    .await;
    refused(
        json!({ "url": "http://169.254.169.254/latest", "types": ["commit"] }),
        "/url",
    )
    .await;
    refused(
        json!({ "url": "http://localhost:8080/hook", "types": ["commit"] }),
        "/url",
    )
    .await;
    refused(
        json!({ "url": "https://hooks.example/x", "types": ["commit", "nonsense"] }),
        "/types/1",
    )
    .await;
    refused(
        json!({ "url": "https://hooks.example/x", "types": [] }),
        "/types",
    )
    .await;
    let listed = app.get(&format!("{BASE}/webhooks")).await;
    assert_eq!(listed.body["items"], json!([]), "nothing stored");
    let unknown = app
        .get(&format!("{BASE}/webhooks/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(unknown.status, 404);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_target_that_redirects_is_refused_naming_where_it_points(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // The test's servers live on 127.0.0.1: the installation opens that address alone.
    app.set_webhooks(WebhookSettings {
        targets: efms_domain::webhooks::TargetPolicy {
            allow_private: false,
            allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
        },
        ..quick("1s")
    });
    app.create_tenant("acme", "Acme").await;
    let refusal = |url: String| {
        let app = &app;
        async move {
            let answer = app
                .post(
                    &format!("{BASE}/webhooks"),
                    &json!({ "url": url, "types": ["commit"] }),
                )
                .await;
            assert_eq!(answer.status, 422, "{url}: {}", answer.body);
            let error = &answer.body["errors"][0];
            assert_eq!(error["pointer"], "/url", "{}", answer.body);
            error["detail"].as_str().unwrap().to_owned()
        }
    };
    let to_private = Redirector::start("http://10.0.0.9/hook").await;
    let why = refusal(to_private.url.clone()).await;
    assert!(
        why.contains("redirects (HTTP 307) to `http://10.0.0.9/hook`")
            && why.contains("a private address"),
        "{why}"
    );
    let to_loopback = Redirector::start("http://127.0.0.2:9/hook").await;
    let why = refusal(to_loopback.url.clone()).await;
    assert!(why.contains("a loopback address"), "{why}");
    let elsewhere = Redirector::start("/moved").await;
    let why = refusal(elsewhere.url.clone()).await;
    assert!(why.contains("do not follow redirects"), "{why}");
    // A loopback address outside the opened network is refused outright.
    let why = refusal("http://127.0.0.3:9/hook".to_owned()).await;
    assert!(why.contains("a loopback address"), "{why}");
    // A receiver in the opened network that answers without a redirect is taken; moving it onto
    // a redirecting URL is refused and changes nothing.
    let receiver = Receiver::start().await;
    let (id, _) = subscribe(&app, &receiver.url).await;
    let moved = app
        .send(
            reqwest::Method::PATCH,
            &format!("{BASE}/webhooks/{id}"),
            Some(("application/json", &json!({ "url": to_private.url }))),
            &[],
        )
        .await;
    assert_eq!(moved.status, 422, "{}", moved.body);
    assert_eq!(moved.body["errors"][0]["pointer"], "/url");
    let listed = app.get(&format!("{BASE}/webhooks")).await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", listed.body);
    assert_eq!(items[0]["url"], receiver.url.as_str());
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn only_an_admin_manages_webhooks_and_a_tenant_sees_only_its_own(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.set_webhooks(quick("1s"));
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("other", "Other").await;
    let receiver = Receiver::start().await;
    let (id, _) = subscribe(&app, &receiver.url).await;
    for role in [efms_domain::Role::Operator, efms_domain::Role::Viewer] {
        let answer = app
            .client
            .get(app.url(&format!("{BASE}/webhooks")))
            .bearer_auth(app.token(role, Some("acme")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "{role:?}");
    }
    let foreign = app
        .client
        .get(app.url(&format!("/api/v1/tenants/other/webhooks/{id}")))
        .bearer_auth(app.token(efms_domain::Role::Admin, Some("other")))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
}

/// The kill test's process: `efms serve` with quick webhook settings.
async fn serve(pool: &PgPool) -> efms_tests::replica::ServeProcess {
    efms_tests::replica::ServeProcess::start_with(
        pool,
        "2s",
        &[
            ("EFMS_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("EFMS_WEBHOOK_RETRY_SCHEDULE", "200ms,500ms,1s,2s,2s"),
            ("EFMS_WEBHOOK_TIMEOUT", "1s"),
        ],
    )
    .await
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn killing_the_sender_mid_burst_loses_no_event_and_duplicates_share_their_id(pool: PgPool) {
    const COMMITS: usize = 500;
    let keys = efms_api::auth::JwtKeys::from_secret(efms_tests::SECRET);
    let system = keys
        .issue(
            "tester",
            efms_domain::Role::System,
            None,
            Duration::from_secs(3_600),
        )
        .unwrap();
    let client = reqwest::Client::new();
    let mut process = serve(&pool).await;
    let created = client
        .post(format!("{}/api/v1/tenants", process.base))
        .bearer_auth(&system)
        .json(&json!({ "slug": "acme", "name": "Acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let receiver = Receiver::start().await;
    let hook = client
        .post(format!("{}{BASE}/webhooks", process.base))
        .bearer_auth(&system)
        .json(&json!({ "url": receiver.url, "types": ["commit"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 201);
    let secret = hook.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut committed = 0;
    while committed < COMMITS {
        if committed == COMMITS / 2 {
            // Mid-burst, with deliveries in flight.
            process.kill();
            process = serve(&pool).await;
        }
        let name = format!("c{committed}");
        let answer = client
            .put(format!("{}{BASE}/clusters/{name}", process.base))
            .bearer_auth(&system)
            .json(&cluster(&name))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());
        committed += 1;
    }
    let received = eventually(
        Duration::from_secs(120),
        "every commit delivered",
        || async {
            let received = receiver.received();
            let names: BTreeSet<String> = received
                .iter()
                .map(|r| {
                    r.json()["data"]["changes"][0]["name"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            (names.len() == COMMITS).then_some(received)
        },
    )
    .await;
    let mut ids_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for delivery in &received {
        verify(&secret, delivery);
        let name = delivery.json()["data"]["changes"][0]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        ids_of
            .entry(name)
            .or_default()
            .insert(delivery.header("webhook-id"));
    }
    assert!(
        ids_of.values().all(|ids| ids.len() == 1),
        "a duplicate shares its webhook-id"
    );
    let duplicates = received.len() - COMMITS;
    println!(
        "{COMMITS} commits, {} deliveries received, {duplicates} duplicates",
        received.len()
    );
}
