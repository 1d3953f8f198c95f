//! The agent's long-running reader of one engine: what its containers are, then what happens to
//! them, across the engine's restarts.
//!
//! At every connection it sends the engine's version, then a snapshot (every watched container,
//! listed and inspected: exit codes, finish times, OOM kills and restart counts of what happened
//! while it was away), then the lifecycle events from where it left off. The events stream ends
//! when the engine stops; the feed says so and reconnects with backoff.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineError, EngineVersion};
use crate::events::{ContainerEvent, Cursor, Deduplicator, EventKind};
use crate::inventory::{self, Container, Watch};

/// What the feed tells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedItem {
    /// Connected to the engine.
    Connected {
        /// The engine's version.
        engine: EngineVersion,
    },
    /// Every watched container, as it is now: replaces what was known.
    Snapshot {
        /// The containers.
        containers: Vec<Container>,
    },
    /// One lifecycle event of a watched container.
    Event {
        /// The event.
        event: ContainerEvent,
    },
    /// The engine cannot be reached, or its events stream ended; the feed reconnects. Told once
    /// per outage.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// How the feed runs.
#[derive(Clone, Debug)]
pub struct FeedSettings {
    /// The engine (see [`Engine::connect`]); `None` for `DOCKER_HOST` or the default socket.
    pub docker_host: Option<String>,
    /// Which containers to report.
    pub watch: Watch,
    /// Where the events stream starts: the time of the last event already told elsewhere (a
    /// restarted agent's control plane knows it); `None` for now.
    pub cursor: Option<Cursor>,
    /// The first wait before reconnecting.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// How many items may wait for the reader before the feed waits for it.
    pub capacity: usize,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            docker_host: None,
            watch: Watch::default(),
            cursor: None,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            capacity: 1024,
        }
    }
}

/// A running feed; it stops when dropped, or when its receiver is.
#[derive(Debug)]
pub struct Feed {
    /// What it tells, in order.
    pub items: mpsc::Receiver<FeedItem>,
    task: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a feed on the current Tokio runtime.
pub fn spawn(settings: FeedSettings) -> Feed {
    let (sender, items) = mpsc::channel(settings.capacity.max(1));
    let task = tokio::spawn(run(settings, sender));
    Feed { items, task }
}

/// The feed's state carried across connections.
struct Progress {
    cursor: Cursor,
    dedup: Deduplicator,
}

async fn run(settings: FeedSettings, sender: mpsc::Sender<FeedItem>) {
    let mut progress = Progress {
        cursor: settings.cursor.unwrap_or_else(Cursor::now),
        dedup: Deduplicator::new(),
    };
    let mut backoff = settings.backoff_initial;
    // An outage is told once, not at every failed attempt.
    let mut outage_told = false;
    loop {
        let mut connected = false;
        let reason = match session(&settings, &sender, &mut progress, &mut connected).await {
            Ok(()) => "the engine's events stream ended".to_owned(),
            Err(SessionEnd::ReaderGone) => return,
            Err(SessionEnd::Engine(error)) => error.to_string(),
        };
        if connected {
            outage_told = false;
            backoff = settings.backoff_initial;
        }
        if !outage_told {
            tracing::warn!(%reason, "Docker engine disconnected");
            if sender
                .send(FeedItem::Disconnected { reason })
                .await
                .is_err()
            {
                return;
            }
            outage_told = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

enum SessionEnd {
    ReaderGone,
    Engine(EngineError),
}

impl From<EngineError> for SessionEnd {
    fn from(error: EngineError) -> Self {
        Self::Engine(error)
    }
}

async fn send(sender: &mpsc::Sender<FeedItem>, item: FeedItem) -> Result<(), SessionEnd> {
    sender.send(item).await.map_err(|_| SessionEnd::ReaderGone)
}

/// One connection: version, snapshot, then events until the stream ends (with a snapshot again
/// after each creation or start).
async fn session(
    settings: &FeedSettings,
    sender: &mpsc::Sender<FeedItem>,
    progress: &mut Progress,
    connected: &mut bool,
) -> Result<(), SessionEnd> {
    let engine = Engine::connect(settings.docker_host.as_deref()).await?;
    let version = engine.version().await?;
    *connected = true;
    send(sender, FeedItem::Connected { engine: version }).await?;
    // Events are read from the cursor, which is older than the listing: nothing that happens
    // while listing is missed (it may be told twice, by the snapshot and by an event).
    let filters = HashMap::from([
        ("type", vec!["container"]),
        (
            "event",
            EventKind::ALL.iter().map(|(_, action)| *action).collect(),
        ),
    ]);
    let options = EventsOptionsBuilder::default()
        .since(&progress.cursor.as_since())
        .filters(&filters)
        .build();
    let mut stream = engine.docker().events(Some(options));
    let containers = inventory::list(&engine, &settings.watch).await?;
    send(sender, FeedItem::Snapshot { containers }).await?;
    while let Some(message) = stream.next().await {
        let message = message.map_err(|error| engine.api_error(error))?;
        let Some(event) = ContainerEvent::from_message(&message) else {
            continue;
        };
        progress.cursor = progress.cursor.max(event.cursor());
        if !settings.watch.matches(&event.labels, &event.image) || !progress.dedup.admit(&event) {
            continue;
        }
        // A created or started container is told whole (limits, ports, labels, image, times):
        // its events alone do not carry them.
        let whole = matches!(event.kind, EventKind::Create | EventKind::Start);
        send(sender, FeedItem::Event { event }).await?;
        if whole {
            let containers = inventory::list(&engine, &settings.watch).await?;
            send(sender, FeedItem::Snapshot { containers }).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_engine_that_cannot_be_reached_is_told_as_disconnected_naming_it() {
        let mut feed = spawn(FeedSettings {
            docker_host: Some("unix:///nonexistent/efms/docker.sock".to_owned()),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..FeedSettings::default()
        });
        let first = feed.items.recv().await.unwrap();
        let FeedItem::Disconnected { reason } = first else {
            panic!("expected disconnected, got {first:?}");
        };
        assert!(reason.contains("/nonexistent/efms/docker.sock"), "{reason}");
    }
}
