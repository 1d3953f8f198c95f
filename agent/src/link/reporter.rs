//! What the agent reports, whether the control plane is connected or not: the engine's feed
//! (snapshots and events), a heartbeat every interval with the host's utilisation and whether the
//! engine answers, the running containers' usage, the host's facts when they change, and what the
//! launched proxies hold (their `config_dump`, every check interval). Reports
//! go to the [`Outbox`]; the stream sends them from there.
//!
//! It starts at the first `Welcome`, which says the interval, the images to watch, and where the
//! engine's events resume for a restarted agent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use efms_fleet_proto as proto;
use efms_fleet_proto::agent_message::Body;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::outbox::Outbox;
use super::AbortOnDrop;
use crate::engine::{Engine, EngineVersion};
use crate::events::{Cursor, EventKind};
use crate::feed::{self, Feed, FeedItem, FeedSettings};
use crate::host::facts;
use crate::host::usage::UsageSampler;
use crate::inventory::{ContainerState, Watch};
use crate::report;
use crate::stats;

/// How many containers' stats are asked of the engine at once (each takes the engine a second or
/// two of sampling).
const USAGE_PARALLELISM: usize = 5;

/// What the control plane says about reporting.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Instructions {
    /// How often to send a heartbeat and the containers' usage.
    pub heartbeat_interval: Duration,
    /// Which containers to report.
    pub watch: Watch,
    /// Where the engine's events stream starts when the feed first starts: just after the last
    /// event the control plane stored for the VM.
    pub resume_from: Option<Cursor>,
}

/// The reporter's fixed settings.
#[derive(Clone, Debug)]
pub(crate) struct ReporterSettings {
    /// The engine (`None`: `DOCKER_HOST` or the default socket).
    pub docker_host: Option<String>,
    /// How often the running proxies' `config_dump`s are read.
    pub config_check_interval: Duration,
}

/// Whether the engine answers, as the feed last told.
#[derive(Clone, Debug, PartialEq)]
enum EngineState {
    /// Not yet told.
    Unknown,
    /// Connected, with this version.
    Reachable(EngineVersion),
    /// Cannot be reached, for this reason.
    Unreachable(String),
}

struct Reporter {
    settings: ReporterSettings,
    outbox: Arc<Outbox>,
    facts: watch::Sender<proto::HostFacts>,
    engine: EngineState,
    /// `None` until the first heartbeat, which has no utilisation (that needs two samples).
    sampler: Option<UsageSampler>,
    /// The watched containers that run, by id.
    running: BTreeSet<String>,
    /// The time of the last event told; where a restarted feed resumes.
    cursor: Option<Cursor>,
    usage_round: Option<AbortOnDrop<Option<proto::ContainerUsages>>>,
    check_round: Option<AbortOnDrop<Option<proto::ConfigChecks>>>,
}

/// Reports until `instructions` is dropped.
pub(crate) async fn run(
    settings: ReporterSettings,
    outbox: Arc<Outbox>,
    facts: watch::Sender<proto::HostFacts>,
    mut instructions: watch::Receiver<Option<Instructions>>,
) {
    let first = match instructions.wait_for(Option::is_some).await {
        Ok(first) => first.clone(),
        Err(_) => return,
    };
    let Some(mut current) = first else {
        return;
    };
    let mut reporter = Reporter {
        settings,
        outbox,
        facts,
        engine: EngineState::Unknown,
        sampler: None,
        running: BTreeSet::new(),
        cursor: current.resume_from,
        usage_round: None,
        check_round: None,
    };
    let mut feed = reporter.start_feed(&current.watch);
    let mut ticker = heartbeat_ticker(current.heartbeat_interval);
    let mut checks = heartbeat_ticker(reporter.settings.config_check_interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => reporter.on_tick().await,
            item = feed.items.recv() => match item {
                Some(item) => reporter.on_feed(item).await,
                None => feed = reporter.start_feed(&current.watch),
            },
            usage = next_round(&mut reporter.usage_round), if reporter.usage_round.is_some() => {
                reporter.usage_round = None;
                if let Some(usage) = usage {
                    reporter.outbox.push(Body::Usage(usage));
                }
            }
            _ = checks.tick() => reporter.start_check_round(),
            checked = next_round(&mut reporter.check_round), if reporter.check_round.is_some() => {
                reporter.check_round = None;
                if let Some(checked) = checked {
                    reporter.outbox.push(Body::Config(checked));
                }
            }
            changed = instructions.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(next) = instructions.borrow_and_update().clone() else {
                    continue;
                };
                if next.heartbeat_interval != current.heartbeat_interval {
                    tracing::info!(interval = ?next.heartbeat_interval, "heartbeat interval changed");
                    ticker = heartbeat_ticker(next.heartbeat_interval);
                }
                if next.watch != current.watch {
                    tracing::info!(images = ?next.watch.images, "watched images changed");
                    drop(feed);
                    feed = reporter.start_feed(&next.watch);
                }
                current = next;
            }
        }
    }
}

/// Ticks every `interval`, the first one an interval from now.
fn heartbeat_ticker(interval: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

async fn next_round<T: Send + 'static>(round: &mut Option<AbortOnDrop<Option<T>>>) -> Option<T> {
    match round {
        Some(round) => round.join().await.flatten(),
        None => std::future::pending().await,
    }
}

impl Reporter {
    fn start_feed(&self, watch: &Watch) -> Feed {
        feed::spawn(FeedSettings {
            docker_host: self.settings.docker_host.clone(),
            watch: watch.clone(),
            cursor: self.cursor,
            ..FeedSettings::default()
        })
    }

    async fn on_tick(&mut self) {
        self.refresh_facts().await;
        self.heartbeat();
        self.start_usage_round();
    }

    async fn on_feed(&mut self, item: FeedItem) {
        match item {
            FeedItem::Connected { engine } => {
                self.engine_now(EngineState::Reachable(engine)).await;
            }
            FeedItem::Disconnected { reason } => {
                self.engine_now(EngineState::Unreachable(reason)).await;
            }
            FeedItem::Snapshot { containers } => {
                self.running = containers
                    .iter()
                    .filter(|container| container.state == ContainerState::Running)
                    .map(|container| container.id.clone())
                    .collect();
                self.outbox
                    .push(Body::Snapshot(report::snapshot(&containers)));
            }
            FeedItem::Event { event } => {
                match event.kind {
                    EventKind::Start | EventKind::Restart => {
                        self.running.insert(event.container_id.clone());
                    }
                    EventKind::Die | EventKind::Stop | EventKind::Destroy => {
                        self.running.remove(&event.container_id);
                    }
                    _ => {}
                }
                self.cursor = self.cursor.max(Some(event.cursor()));
                self.outbox
                    .push(Body::Event(report::container_event(&event)));
            }
        }
    }

    /// A change of the engine's state is told at once: the facts (its version) and a heartbeat.
    async fn engine_now(&mut self, state: EngineState) {
        if state == self.engine {
            return;
        }
        self.engine = state;
        self.refresh_facts().await;
        self.heartbeat();
    }

    /// Reads the host's facts again; sends them when they differ from the last ones told.
    async fn refresh_facts(&mut self) {
        let mut facts = match facts::collect(None).await {
            Ok(facts) => report::host_facts(&facts),
            Err(error) => {
                tracing::warn!(%error, "cannot read the host's facts");
                return;
            }
        };
        facts.docker = match &self.engine {
            EngineState::Reachable(version) => Some(report::engine_version(version)),
            EngineState::Unknown | EngineState::Unreachable(_) => None,
        };
        if *self.facts.borrow() != facts {
            self.facts.send_replace(facts.clone());
            self.outbox.push(Body::Facts(facts));
        }
    }

    fn heartbeat(&mut self) {
        let usage = if let Some(sampler) = &mut self.sampler {
            sampler
                .sample()
                .map_err(|error| tracing::warn!(%error, "cannot read the host's utilisation"))
                .ok()
                .map(|usage| report::host_usage(&usage))
        } else {
            // The first heartbeat: utilisation is a rate, measured from here on.
            self.sampler = UsageSampler::new()
                .map_err(|error| tracing::warn!(%error, "cannot read the host's utilisation"))
                .ok();
            None
        };
        let (engine_reachable, engine_error) = match &self.engine {
            EngineState::Reachable(_) => (true, String::new()),
            EngineState::Unreachable(reason) => (false, reason.clone()),
            EngineState::Unknown => (false, "the Docker engine was not reached yet".to_owned()),
        };
        self.outbox.push(Body::Heartbeat(proto::Heartbeat {
            sampled_at: report::now_millis(),
            usage,
            engine_reachable,
            engine_error,
        }));
    }

    /// Reads the launched proxies' `config_dump`s in a task of its own; a round still running
    /// skips this one.
    fn start_check_round(&mut self) {
        if self.check_round.is_some()
            || !matches!(self.engine, EngineState::Reachable(_))
            || self.running.is_empty()
        {
            return;
        }
        let docker_host = self.settings.docker_host.clone();
        self.check_round = Some(AbortOnDrop::spawn(async move {
            crate::config_dump::check_round(docker_host.as_deref()).await
        }));
    }

    /// Asks the engine for the running containers' usage in a task of its own (it takes the
    /// engine seconds); a round still running skips this one.
    fn start_usage_round(&mut self) {
        if self.usage_round.is_some() {
            tracing::debug!("the last round of container usage is still running: skipped");
            return;
        }
        if !matches!(self.engine, EngineState::Reachable(_)) || self.running.is_empty() {
            return;
        }
        let ids: Vec<String> = self.running.iter().cloned().collect();
        let docker_host = self.settings.docker_host.clone();
        self.usage_round = Some(AbortOnDrop::spawn(async move {
            let sampled_at = report::now_millis();
            let engine = match Engine::connect(docker_host.as_deref()).await {
                Ok(engine) => engine,
                Err(error) => {
                    tracing::debug!(%error, "no container usage this round");
                    return None;
                }
            };
            let results = stats::usage_of_each(&engine, &ids, USAGE_PARALLELISM).await;
            let containers: Vec<proto::ContainerUsage> = ids
                .iter()
                .zip(results)
                .filter_map(|(id, result)| match result {
                    Ok(usage) => usage.map(|usage| report::container_usage(id, &usage)),
                    Err(error) => {
                        tracing::debug!(%error, container = %id, "no usage for this container");
                        None
                    }
                })
                .collect();
            (!containers.is_empty()).then_some(proto::ContainerUsages {
                sampled_at,
                containers,
            })
        }));
    }
}
