//! Aggregate states kept in memory between commands, one per stream, with the sequence they stand
//! at.
//!
//! A command on a warm stream is decided on the kept state instead of a state loaded from the store,
//! so what it costs depends on what it changes, not on the size of the aggregate. The kept state is
//! never trusted blindly: the append's optimistic check on the sequence refuses a commit decided on
//! a state that another writer (another replica) has moved past, and a refusal or a command that
//! changes nothing is confirmed against the store before it is answered (see
//! [`crate::bus::CommandBus`]). A state is replaced only by the state after a stored commit.
//!
//! Memory is bounded by a number of streams: past it, the stream used least recently is dropped
//! (and loaded from its snapshot and the events after it when used again).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use efms_domain::config::limits::CommitContext;
use efms_domain::config::{ConfigCommand, ConfigError, ConfigEvent, ConfigRepo};
use efms_domain::fleet::{Vm, VmCommand, VmError, VmEvent};
use efms_domain::Tenant;
use uuid::Uuid;

/// The streams kept warm when no other number is set.
pub const DEFAULT_WARM_STREAMS: usize = 1_000;

/// An aggregate that can say which events a command causes without changing itself, so that a
/// refused command leaves the kept state as it was.
pub trait Decide: Aggregate {
    /// The events `command` causes on this state, or why it is refused.
    fn decide(
        &self,
        command: Self::Command,
        services: &Self::Services,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send;
}

impl Decide for ConfigRepo {
    async fn decide(
        &self,
        command: ConfigCommand,
        context: &CommitContext,
    ) -> Result<Vec<ConfigEvent>, ConfigError> {
        self.decide_command(command, context)
    }
}

impl Decide for Vm {
    async fn decide(&self, command: VmCommand, _services: &()) -> Result<Vec<VmEvent>, VmError> {
        Vm::decide(self, command)
    }
}

impl Decide for efms_domain::fleet::rollout::Rollout {
    async fn decide(
        &self,
        command: Self::Command,
        _services: &(),
    ) -> Result<Vec<Self::Event>, Self::Error> {
        efms_domain::fleet::rollout::Rollout::decide(self, command)
    }
}

impl Decide for Tenant {
    /// A tenant is small: it decides on a copy of itself.
    async fn decide(
        &self,
        command: Self::Command,
        services: &Self::Services,
    ) -> Result<Vec<Self::Event>, Self::Error> {
        let mut copy = self.clone();
        let sink = EventSink::default();
        copy.handle(command, services, &sink).await?;
        Ok(sink.collect().await)
    }
}

/// Which stream: tenant, aggregate type, aggregate id.
pub type StreamKey = (Uuid, &'static str, String);

/// A kept state and the sequence of the last event it has applied.
pub struct Warm<A> {
    /// The state.
    pub state: A,
    /// The sequence of the last event applied to it (0: none).
    pub sequence: usize,
}

/// The slot of one stream: whoever holds its lock is the only command of this replica deciding on
/// that stream; it takes the state out, and puts back only a state that matches the store.
#[derive(Default)]
pub struct Slot {
    kept: Option<Box<dyn Any + Send + Sync>>,
}

impl Slot {
    /// Takes the kept state out (the slot is empty until [`Slot::put`]).
    pub fn take<A: Aggregate + 'static>(&mut self) -> Option<Warm<A>> {
        self.kept
            .take()
            .and_then(|kept| kept.downcast::<Warm<A>>().ok())
            .map(|warm| *warm)
    }

    /// Keeps `warm`, which must be the state after the stream's event `warm.sequence` as stored.
    pub fn put<A: Aggregate + 'static>(&mut self, warm: Warm<A>) {
        self.kept = Some(Box::new(warm));
    }
}

struct Entry {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    last_used: u64,
}

struct Streams {
    entries: HashMap<StreamKey, Entry>,
    clock: u64,
}

/// The warm states of at most a given number of streams. Cheap to clone (shared).
#[derive(Clone)]
pub struct WarmStates {
    streams: Arc<Mutex<Streams>>,
    capacity: usize,
}

impl std::fmt::Debug for WarmStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmStates")
            .field("capacity", &self.capacity)
            .field("streams", &self.len())
            .finish()
    }
}

impl WarmStates {
    /// Room for `capacity` streams (0 keeps nothing: every command loads from the store).
    pub fn new(capacity: usize) -> Self {
        Self {
            streams: Arc::new(Mutex::new(Streams {
                entries: HashMap::new(),
                clock: 0,
            })),
            capacity,
        }
    }

    /// How many streams have a slot.
    pub fn len(&self) -> usize {
        self.streams
            .lock()
            .expect("warm states poisoned")
            .entries
            .len()
    }

    /// Whether no stream has a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot of `key`, made when missing; the stream used least recently loses its slot when
    /// there is no room.
    pub fn slot(&self, key: &StreamKey) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut streams = self.streams.lock().expect("warm states poisoned");
        streams.clock += 1;
        let now = streams.clock;
        if let Some(entry) = streams.entries.get_mut(key) {
            entry.last_used = now;
            return entry.slot.clone();
        }
        let slot = Arc::new(tokio::sync::Mutex::new(Slot::default()));
        if self.capacity == 0 {
            return slot;
        }
        if streams.entries.len() >= self.capacity {
            let oldest = streams
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                streams.entries.remove(&oldest);
            }
        }
        streams.entries.insert(
            key.clone(),
            Entry {
                slot: slot.clone(),
                last_used: now,
            },
        );
        slot
    }
}
