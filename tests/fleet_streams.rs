//! The agents' side of the control plane (ADR 0011), spoken to as an agent would over the fleet
//! protocol on the gRPC listener: registration and join tokens, facts and heartbeats, containers
//! and their lifecycle, refusals of bad reports, removal, and the heartbeat sweep.

use std::time::Duration;

use efms_commands::fleet::upkeep::UpkeepSettings;
use efms_fleet_proto::{
    agent_message::Body, server_message, ContainerEvent, ContainerSnapshot, ContainerState,
    EventKind, Heartbeat, ServerMessage,
};
use efms_tests::agent_stream::{acme, container, container_id, register, usage, Agent, BASE};
use efms_tests::fleet::eventually;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;
use tonic::Code;

/// A generous deadline for what happens within a re-check interval or a heartbeat grace.
const WAIT: Duration = Duration::from_secs(20);

/// `GET path` once `ready` holds of its body (the read models follow the log within moments of
/// an acknowledgement).
async fn settled(app: &TestApp, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, path, || async {
        let answer = app.get(path).await;
        ready(&answer.body).then_some(answer.body)
    })
    .await
}

#[sqlx::test(migrations = "../migrations")]
async fn registering_a_vm_answers_its_join_token_once_and_refuses_a_taken_or_invalid_name(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    assert!(token.starts_with("efmsvm_"), "{token}");
    let vm = app.get(&format!("{BASE}/vms/vm-1")).await;
    assert_eq!(vm.status, 200, "{}", vm.body);
    assert_eq!(vm.body["state"], "down");
    assert_eq!(vm.body["labels"], json!({ "role": "edge" }));
    assert!(vm.body.get("join_token").is_none());
    let again = app
        .post(&format!("{BASE}/vms"), &json!({ "name": "vm-1" }))
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let invalid = app
        .post(&format!("{BASE}/vms"), &json!({ "name": "VM One" }))
        .await;
    assert_eq!(invalid.status, 422, "{}", invalid.body);
    assert_eq!(invalid.body["errors"][0]["pointer"], "/name");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_agent_is_welcomed_as_its_vm_and_its_facts_and_heartbeats_make_the_vm_ready(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    let (mut agent, welcome) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    let Some(server_message::Body::Welcome(welcome)) = welcome.body else {
        panic!("the first answer is Welcome: {welcome:?}");
    };
    assert_eq!(
        (welcome.tenant.as_str(), welcome.vm.as_str()),
        ("acme", "vm-1")
    );
    assert_eq!(welcome.acked_seq, 0);
    let answer = agent
        .report(Body::Heartbeat(Heartbeat {
            sampled_at: 1,
            usage: Some(usage(12.5)),
            engine_reachable: true,
            engine_error: String::new(),
        }))
        .await;
    assert!(Agent::acked(&answer, 2), "{answer:?}");
    let vm = settled(&app, &format!("{BASE}/vms/vm-1"), |vm| {
        vm["state"] == "ready"
    })
    .await;
    assert_eq!(vm["connected"], true);
    assert_eq!(vm["facts"]["hostname"], "host-1");
    assert_eq!(vm["facts"]["docker"]["api_version"], "1.41");
    assert_eq!(vm["utilisation"]["cpu_percent"], 12.5);
    let utilisation = app
        .get(&format!("{BASE}/vms/vm-1/utilisation?step=10"))
        .await;
    assert_eq!(utilisation.status, 200, "{}", utilisation.body);
    assert_eq!(utilisation.body["items"][0]["samples"], 1);
    let listed = app
        .get(&format!("{BASE}/vms?state=ready&label=role=edge"))
        .await;
    assert_eq!(listed.body["items"][0]["name"], "vm-1", "{}", listed.body);
    let none = app.get(&format!("{BASE}/vms?label=role=core")).await;
    assert_eq!(none.body["items"], json!([]));
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unknown_join_token_opens_no_stream(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    acme(&app).await;
    let refused = Agent::connect(&app, "efmsvm_not-a-token", "e")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn containers_and_their_lifecycle_events_show_up_with_their_history_and_time_travel(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    let snapshot = ContainerSnapshot {
        containers: vec![container('a', ContainerState::Running)],
    };
    let answer = agent.report(Body::Snapshot(snapshot)).await;
    assert!(Agent::acked(&answer, 2), "{answer:?}");
    let running = settled(&app, &format!("{BASE}/containers?state=running"), |page| {
        page["items"][0]["id"] == container_id('a')
    })
    .await;
    assert_eq!(running["items"][0]["limits"]["memory_bytes"], 256 << 20);
    let before_die = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let die = ContainerEvent {
        container_id: container_id('a'),
        name: "envoy-a".into(),
        image: "efms-test/envoy:1.40.0".into(),
        kind: EventKind::Die.into(),
        exit_code: Some(137),
        time_nanos: chrono::Utc::now().timestamp_nanos_opt().unwrap(),
        ..ContainerEvent::default()
    };
    let answer = agent.report(Body::Event(die.clone())).await;
    assert!(Agent::acked(&answer, 3), "{answer:?}");
    let answer = agent.report(Body::Event(die)).await;
    assert!(
        Agent::acked(&answer, 4),
        "a repeat is acknowledged: {answer:?}"
    );
    let short = &container_id('a')[..12];
    let now = settled(&app, &format!("{BASE}/containers/{short}"), |c| {
        c["state"] == "exited"
    })
    .await;
    assert_eq!(now["exit_code"], 137);
    assert_eq!(now["vm"], "vm-1");
    assert_eq!(now["proxy"]["status"], "NEVER_CONNECTED");
    let events = app.get(&format!("{BASE}/containers/{short}/events")).await;
    let changes: Vec<&str> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["observed", "die"], "the repeat is told once");
    let at = before_die.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let then = app
        .get(&format!(
            "{BASE}/containers/{short}?at={}",
            at.replace('+', "%2B")
        ))
        .await;
    assert_eq!(then.status, 200, "{}", then.body);
    assert_eq!(then.body["state"], "running");
    let vm_then = app
        .get(&format!("{BASE}/vms/vm-1?at={}", at.replace('+', "%2B")))
        .await;
    assert_eq!(
        vm_then.body["containers"][0]["state"], "running",
        "{}",
        vm_then.body
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_malformed_or_foreign_report_is_refused_naming_its_field_and_stores_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    let other = register(&app, "vm-2").await;
    let (mut first, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    let answer = first
        .report(Body::Heartbeat(Heartbeat {
            sampled_at: 1,
            usage: Some(usage(-5.0)),
            engine_reachable: true,
            engine_error: String::new(),
        }))
        .await;
    let Some(server_message::Body::Refused(refused)) = answer.body else {
        panic!("a negative CPU % is refused: {answer:?}");
    };
    assert_eq!(
        (refused.seq, refused.field.as_str()),
        (2, "heartbeat.usage.cpu_percent")
    );
    let utilisation = app.get(&format!("{BASE}/vms/vm-1/utilisation")).await;
    assert_eq!(utilisation.body["items"], json!([]), "nothing stored");
    let answer = first
        .report(Body::Snapshot(ContainerSnapshot {
            containers: vec![container('b', ContainerState::Running)],
        }))
        .await;
    assert!(Agent::acked(&answer, 3), "{answer:?}");
    settled(&app, &format!("{BASE}/containers?vm=vm-1"), |page| {
        page["items"][0]["id"] == container_id('b')
    })
    .await;
    let (mut second, _) = Agent::connect(&app, &other, "epoch-b").await.unwrap();
    let answer = second
        .report(Body::Snapshot(ContainerSnapshot {
            containers: vec![container('b', ContainerState::Running)],
        }))
        .await;
    let Some(server_message::Body::Refused(refused)) = answer.body else {
        panic!("another VM's container is refused: {answer:?}");
    };
    assert!(refused.problem.contains("vm-1"), "{refused:?}");
    let mut unnamed = container('c', ContainerState::Running);
    unnamed.state = 0;
    let answer = second
        .report(Body::Snapshot(ContainerSnapshot {
            containers: vec![unnamed],
        }))
        .await;
    let Some(server_message::Body::Refused(refused)) = answer.body else {
        panic!("a container without a state is refused: {answer:?}");
    };
    assert_eq!(refused.field, "snapshot.containers[0].state");
    let on_second = app.get(&format!("{BASE}/containers?vm=vm-2")).await;
    assert_eq!(on_second.body["items"], json!([]), "{}", on_second.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn removing_a_vm_cuts_its_stream_refuses_its_token_and_keeps_its_history(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    agent
        .report(Body::Snapshot(ContainerSnapshot {
            containers: vec![container('d', ContainerState::Running)],
        }))
        .await;
    settled(&app, &format!("{BASE}/containers?vm=vm-1"), |page| {
        page["items"][0]["id"] == container_id('d')
    })
    .await;
    let removed = app
        .send(
            reqwest::Method::DELETE,
            &format!("{BASE}/vms/vm-1"),
            None,
            &[],
        )
        .await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    let end = agent.ended(WAIT).await;
    assert_eq!(end, Some(Code::PermissionDenied));
    let again = Agent::connect(&app, &token, "epoch-a").await.err().unwrap();
    assert_eq!(again.code(), Code::Unauthenticated);
    let vm = app.get(&format!("{BASE}/vms/vm-1")).await;
    assert_eq!(vm.body["state"], "removed", "{}", vm.body);
    let history = app.get(&format!("{BASE}/vms/vm-1/history")).await;
    let types: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"VmRegistered"));
    assert_eq!(types.last(), Some(&"VmRemoved"));
    let gone = app
        .get(&format!("{BASE}/containers/{}", container_id('d')))
        .await;
    assert_eq!(gone.body["state"], "gone", "{}", gone.body);
    assert!(gone.body["gone_at"].is_string());
    let reused = app
        .post(&format!("{BASE}/vms"), &json!({ "name": "vm-1" }))
        .await;
    assert_eq!(
        reused.status, 409,
        "a removed VM's name is not reused: {}",
        reused.body
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_new_join_token_revokes_the_old_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let old = acme(&app).await;
    let issued = app
        .post(&format!("{BASE}/vms/vm-1/token"), &json!({}))
        .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let new = issued.body["join_token"].as_str().unwrap();
    assert_ne!(new, old);
    let refused = Agent::connect(&app, &old, "e").await.err().unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(Agent::connect(&app, new, "e").await.is_ok());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_reconnected_agent_is_told_how_far_its_reports_were_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    for _ in 0..3 {
        agent
            .report(Body::Heartbeat(Heartbeat {
                sampled_at: 1,
                usage: None,
                engine_reachable: true,
                engine_error: String::new(),
            }))
            .await;
    }
    drop(agent);
    let welcome_of = |message: ServerMessage| match message.body {
        Some(server_message::Body::Welcome(welcome)) => welcome,
        other => panic!("Welcome expected: {other:?}"),
    };
    let (_, same) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    assert_eq!(welcome_of(same).acked_seq, 4);
    let (_, fresh) = Agent::connect(&app, &token, "epoch-b").await.unwrap();
    assert_eq!(
        welcome_of(fresh).acked_seq,
        0,
        "a new process starts afresh"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_vm_whose_heartbeats_stop_turns_down_once_the_grace_has_passed(pool: PgPool) {
    let settings = UpkeepSettings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_grace: Duration::from_secs(1),
        ..UpkeepSettings::default()
    };
    let app = TestApp::spawn_with_fleet(pool, settings).await;
    let token = acme(&app).await;
    let (agent, welcome) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    let Some(server_message::Body::Welcome(welcome)) = welcome.body else {
        panic!("Welcome expected");
    };
    assert_eq!(welcome.settings.unwrap().heartbeat_interval_ms, 1_000);
    eventually(WAIT, "the VM to be ready", || async {
        (app.get(&format!("{BASE}/vms/vm-1")).await.body["state"] == "ready").then_some(())
    })
    .await;
    drop(agent);
    eventually(WAIT, "the VM to be down", || async {
        let vm: Value = app.get(&format!("{BASE}/vms/vm-1")).await.body;
        (vm["state"] == "down" && vm["connected"] == false).then_some(())
    })
    .await;
    let history = app.get(&format!("{BASE}/vms/vm-1/history")).await;
    let last = history.body["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"]["to"], "down", "{last}");
    assert!(last["event"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("no heartbeat"));
}

#[sqlx::test(migrations = "../migrations")]
async fn another_tenants_vms_are_not_found(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    acme(&app).await;
    app.create_tenant("globex", "Globex").await;
    let token = app.token(efms_domain::Role::Admin, Some("globex"));
    let answer = app
        .client
        .get(app.url(&format!("{BASE}/vms/vm-1")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let theirs = app.get("/api/v1/tenants/globex/vms/vm-1").await;
    assert_eq!(theirs.status, 404);
}

fn watched(welcome: &ServerMessage) -> Vec<String> {
    match &welcome.body {
        Some(server_message::Body::Welcome(welcome)) => welcome
            .settings
            .as_ref()
            .map(|settings| settings.watch_images.clone())
            .unwrap_or_default(),
        other => panic!("not a Welcome: {other:?}"),
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn changing_the_watched_images_tells_the_open_stream_and_the_next_welcome(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let registered = app
        .post(
            &format!("{BASE}/vms"),
            &json!({ "name": "vm-1", "watch_images": ["envoyproxy/envoy"] }),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    assert_eq!(
        registered.body["vm"]["watch_images"],
        json!(["envoyproxy/envoy"])
    );
    let token = registered.body["join_token"].as_str().unwrap().to_owned();
    let (mut agent, welcome) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    assert_eq!(watched(&welcome), ["envoyproxy/envoy"]);

    let bad = app
        .send(
            reqwest::Method::PATCH,
            &format!("{BASE}/vms/vm-1"),
            Some((
                "application/json",
                &json!({ "watch_images": ["ok/image", "not an image"] }),
            )),
            &[],
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["pointer"], "/watch_images/1");

    let changed = app
        .send(
            reqwest::Method::PATCH,
            &format!("{BASE}/vms/vm-1"),
            Some((
                "application/json",
                &json!({ "watch_images": ["envoyproxy/envoy", "registry:5000/edge/envoy"],
                         "region": "eu-west", "labels": { "tier": "edge" } }),
            )),
            &[],
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.body["region"], "eu-west");
    assert_eq!(changed.body["labels"]["tier"], "edge");
    let told = tokio::time::timeout(WAIT, async {
        loop {
            let answer = agent
                .answers
                .message()
                .await
                .unwrap()
                .expect("the stream stays open");
            if let Some(server_message::Body::Settings(settings)) = answer.body {
                return settings.watch_images;
            }
        }
    })
    .await
    .expect("the open stream is told in time");
    assert_eq!(told, ["envoyproxy/envoy", "registry:5000/edge/envoy"]);
    let (_again, welcome) = Agent::connect(&app, &token, "epoch-b").await.unwrap();
    assert_eq!(
        watched(&welcome),
        ["envoyproxy/envoy", "registry:5000/edge/envoy"],
        "and so is a new one"
    );

    let cleared = app
        .send(
            reqwest::Method::PATCH,
            &format!("{BASE}/vms/vm-1"),
            Some(("application/json", &json!({ "region": null }))),
            &[],
        )
        .await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert!(cleared.body.get("region").is_none(), "{}", cleared.body);
    assert_eq!(
        cleared.body["labels"]["tier"], "edge",
        "what is left out stays"
    );
    let history = app.get(&format!("{BASE}/vms/vm-1/history")).await;
    let placements = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "VmPlacementChanged")
        .count();
    assert_eq!(placements, 2, "each change is an event: {}", history.body);
}
