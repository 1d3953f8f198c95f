//! Lifecycle events from a real Docker engine, through the agent's feed: one of each, however many
//! the engine raises.

mod support;

use efms_agent::events::{ContainerEvent, EventKind};
use efms_agent::feed::{self, FeedItem, FeedSettings};
use efms_agent::{inventory, Engine};
use support::{next_item, TestEngine};

const ENGINE: &str = "agent";

fn event_of<'a>(item: &'a FeedItem, container: &str) -> Option<&'a ContainerEvent> {
    match item {
        FeedItem::Event { event } if event.name == container => Some(event),
        _ => None,
    }
}

fn is_event(item: &FeedItem, container: &str, kind: EventKind) -> bool {
    event_of(item, container).is_some_and(|event| event.kind == kind)
}

#[tokio::test]
async fn docker_kill_yields_one_die_event_with_its_exit_code() {
    let Some(engine) = TestEngine::start(ENGINE) else {
        return;
    };
    let mut feed = feed::spawn(FeedSettings {
        docker_host: Some(engine.host.clone()),
        ..FeedSettings::default()
    });
    next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Snapshot { .. }),
        |_| {},
    )
    .await;
    let name = support::unique("killed");
    engine.run_envoy(&name, &name, &[]);
    next_item(
        &mut feed,
        |item| is_event(item, &name, EventKind::Start),
        |_| {},
    )
    .await;

    engine.docker(&["kill", &name]);
    let mut events = Vec::new();
    let die = next_item(
        &mut feed,
        |item| is_event(item, &name, EventKind::Die),
        |item| events.extend(event_of(item, &name).cloned()),
    )
    .await;
    let die = event_of(&die, &name).unwrap().clone();
    assert_eq!(die.exit_code, Some(137));
    assert_eq!(die.node_id.as_deref(), Some(name.as_str()));
    assert!(events
        .iter()
        .any(|event| event.kind == EventKind::Kill && event.signal.is_some()));

    engine.remove(&[&name]);
    let mut after_die = Vec::new();
    next_item(
        &mut feed,
        |item| is_event(item, &name, EventKind::Destroy),
        |item| after_die.extend(event_of(item, &name).cloned()),
    )
    .await;
    assert!(
        !after_die.iter().any(|event| event.kind == EventKind::Die),
        "one die event only: {after_die:?}"
    );
}

#[tokio::test]
async fn an_oom_killed_container_is_reported_once() {
    let Some(engine) = TestEngine::start(ENGINE) else {
        return;
    };
    let mut feed = feed::spawn(FeedSettings {
        docker_host: Some(engine.host.clone()),
        ..FeedSettings::default()
    });
    next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Snapshot { .. }),
        |_| {},
    )
    .await;
    let name = support::unique("oom");
    let label = format!("efms.node_id={name}");
    // A shell doubling a string until the 16 MiB limit stops it.
    engine.docker(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--label",
        &label,
        "--network",
        "none",
        "--memory",
        "16m",
        "--memory-swap",
        "16m",
        "--entrypoint",
        "/bin/sh",
        &engine.image,
        "-c",
        "x=0123456789abcdef; while :; do x=$x$x; done",
    ]);
    let mut events = Vec::new();
    next_item(
        &mut feed,
        |item| is_event(item, &name, EventKind::Die),
        |item| events.extend(event_of(item, &name).cloned()),
    )
    .await;
    let docker = Engine::connect(Some(&engine.host)).await.unwrap();
    let container = inventory::inspect(&docker, &name).await.unwrap().unwrap();
    assert!(
        container.oom_killed,
        "the engine says the OOM killer struck"
    );
    assert_eq!(container.exit_code, Some(137));

    engine.remove(&[&name]);
    next_item(
        &mut feed,
        |item| is_event(item, &name, EventKind::Destroy),
        |item| events.extend(event_of(item, &name).cloned()),
    )
    .await;
    let ooms = events
        .iter()
        .filter(|event| event.kind == EventKind::Oom)
        .count();
    assert_eq!(ooms, 1, "one oom event: {events:?}");
}

#[tokio::test]
async fn a_container_failing_its_health_check_turns_unhealthy_once() {
    let Some(engine) = TestEngine::start(ENGINE) else {
        return;
    };
    let mut feed = feed::spawn(FeedSettings {
        docker_host: Some(engine.host.clone()),
        ..FeedSettings::default()
    });
    next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Snapshot { .. }),
        |_| {},
    )
    .await;
    let name = support::unique("unhealthy");
    let label = format!("efms.node_id={name}");
    // Envoy is not there: the probe of its admin port fails from the start.
    engine.docker(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--label",
        &label,
        "--network",
        "none",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--health-start-period",
        "1ms",
        "--entrypoint",
        "/bin/sleep",
        &engine.image,
        "600",
    ]);
    let is_unhealthy = |item: &FeedItem| {
        event_of(item, &name).is_some_and(|event| {
            event.kind == EventKind::HealthStatus
                && event.health == Some(inventory::Health::Unhealthy)
        })
    };
    next_item(&mut feed, is_unhealthy, |_| {}).await;
    let docker = Engine::connect(Some(&engine.host)).await.unwrap();
    let container = inventory::inspect(&docker, &name).await.unwrap().unwrap();
    assert_eq!(container.health, inventory::Health::Unhealthy);

    engine.remove(&[&name]);
    let mut later = Vec::new();
    next_item(
        &mut feed,
        |item| is_event(item, &name, EventKind::Destroy),
        |item| later.extend(event_of(item, &name).cloned()),
    )
    .await;
    assert!(
        !later
            .iter()
            .any(|event| event.kind == EventKind::HealthStatus),
        "the status is told once while it holds: {later:?}"
    );
}
