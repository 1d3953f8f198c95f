//! The agent's feed across a restart of the Docker engine: the events stream ends, the feed
//! reconnects, catches up by listing and sees what was created meanwhile.

mod support;

use std::time::Duration;

use efms_agent::events::EventKind;
use efms_agent::feed::{self, FeedItem, FeedSettings};
use efms_agent::inventory::ContainerState;
use support::{next_item, TestEngine};

/// An engine of its own: the test stops it.
const ENGINE: &str = "agent-restart";

#[tokio::test]
async fn after_the_engine_restarts_the_feed_catches_up_and_sees_a_container_created_meanwhile() {
    let Some(engine) = TestEngine::start(ENGINE) else {
        return;
    };
    let mut feed = feed::spawn(FeedSettings {
        docker_host: Some(engine.host.clone()),
        // Slow to come back, so that the engine is up again well before the feed.
        backoff_initial: Duration::from_secs(3),
        backoff_max: Duration::from_secs(5),
        ..FeedSettings::default()
    });
    next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Snapshot { .. }),
        |_| {},
    )
    .await;
    let before = support::unique("before");
    engine.run_envoy(&before, &before, &[]);
    next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Event { event } if event.name == before && event.kind == EventKind::Start),
        |_| {},
    )
    .await;

    engine.stop();
    next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Disconnected { .. }),
        |_| {},
    )
    .await;
    engine.restart();
    let meanwhile = support::unique("meanwhile");
    let label = format!("efms.node_id={meanwhile}");
    engine.docker(&[
        "create",
        "--name",
        &meanwhile,
        "--label",
        &label,
        "--network",
        "none",
        &engine.image,
    ]);

    let snapshot = next_item(
        &mut feed,
        |item| matches!(item, FeedItem::Snapshot { .. }),
        |_| {},
    )
    .await;
    let FeedItem::Snapshot { containers } = snapshot else {
        unreachable!()
    };
    let stopped = containers
        .iter()
        .find(|container| container.name == before)
        .expect("the container that ran before the restart is listed");
    assert_eq!(stopped.state, ContainerState::Exited);
    assert!(stopped.exit_code.is_some());
    assert!(stopped.finished_at.is_some());
    match containers
        .iter()
        .find(|container| container.name == meanwhile)
    {
        Some(created) => assert_eq!(created.state, ContainerState::Created),
        None => {
            // Created after the listing: its event follows.
            next_item(
                &mut feed,
                |item| matches!(item, FeedItem::Event { event } if event.name == meanwhile && event.kind == EventKind::Create),
                |_| {},
            )
            .await;
        }
    }

    engine.remove(&[&before, &meanwhile]);
    engine.stop();
}
