//! The fleet's side of the gRPC listener (`efms.fleet.v1.Fleet/Connect`, ADR 0011): one stream per
//! agent, authenticated by its VM's join token; what the agent reports is checked and stored (its
//! history in the VM's stream of the log, its presence and samples beside it) and acknowledged by
//! seq, so a reconnected agent resends exactly what was not stored.

mod convert;
mod orders;
pub mod rollouts;
mod service;
mod stream;
mod token_watch;

use std::sync::Arc;
use std::time::Duration;

use efms_commands::fleet::Fleet;
use efms_domain::fleet::DEFAULT_HEARTBEAT_INTERVAL;
use tokio::sync::watch;

pub use orders::{BootstrapRequest, ProxyBootstraps};
pub(crate) use service::FleetService;

use crate::metrics::FleetMetrics;

/// How the agents' streams run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetStreamSettings {
    /// How often agents send a heartbeat (told to them in `Welcome`).
    pub heartbeat_interval: Duration,
    /// How often an open stream checks that its join token is still live.
    pub recheck: Duration,
    /// How long a new stream may take to say `Hello`.
    pub hello_timeout: Duration,
}

impl Default for FleetStreamSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            recheck: crate::DEFAULT_RECHECK,
            hello_timeout: Duration::from_secs(30),
        }
    }
}

/// The agents' streams of this process.
#[derive(Clone)]
pub struct FleetServer {
    inner: Arc<Inner>,
}

struct Inner {
    fleet: Fleet,
    settings: watch::Sender<FleetStreamSettings>,
    metrics: FleetMetrics,
    /// Moved on when this process revoked a token: open streams check theirs at once (a
    /// stream busy storing a report sees the change when it is done).
    recheck_now: watch::Sender<u64>,
    stopping: watch::Sender<bool>,
    /// The open streams' join tokens, re-checked together.
    tokens: Arc<token_watch::TokenWatch>,
    /// The open streams by VM, nudged when their VM has operations to send.
    dispatch: Arc<orders::Dispatch>,
    /// Who mints the bootstraps of launched proxies, once the API said.
    bootstraps: std::sync::OnceLock<Arc<dyn ProxyBootstraps>>,
    /// Bootstraps minted for launches not finished yet, by operation.
    minted: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, String>>,
}

impl std::fmt::Debug for FleetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetServer")
            .field("settings", &*self.inner.settings.borrow())
            .finish_non_exhaustive()
    }
}

impl FleetServer {
    /// Streams storing through `fleet`; starts the re-checks of their join tokens.
    pub fn new(fleet: Fleet, settings: FleetStreamSettings, metrics: FleetMetrics) -> Self {
        let inner = Inner {
            fleet,
            settings: watch::Sender::new(settings),
            metrics,
            recheck_now: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
            tokens: Arc::default(),
            dispatch: Arc::default(),
            bootstraps: std::sync::OnceLock::new(),
            minted: std::sync::Mutex::default(),
        };
        inner
            .dispatch
            .listen(inner.fleet.pool().clone(), inner.stopping.subscribe());
        rollouts::spawn(inner.fleet.clone(), inner.stopping.subscribe());
        inner.tokens.spawn(
            inner.fleet.pool().clone(),
            inner.settings.subscribe(),
            inner.recheck_now.subscribe(),
            inner.stopping.subscribe(),
        );
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The settings new streams run with.
    pub fn settings(&self) -> FleetStreamSettings {
        *self.inner.settings.borrow()
    }

    /// Changes the settings of the streams opened from now on.
    pub fn update(&self, change: impl FnOnce(&mut FleetStreamSettings)) {
        self.inner.settings.send_modify(change);
    }

    /// Has every open stream's token checked now (after this process revoked one).
    pub fn recheck_now(&self) {
        self.inner
            .recheck_now
            .send_modify(|generation| *generation += 1);
    }

    /// Has launched proxies' bootstraps minted by `bootstraps` (set once; later calls are
    /// ignored).
    pub fn set_bootstraps(&self, bootstraps: Arc<dyn ProxyBootstraps>) {
        let _ = self.inner.bootstraps.set(bootstraps);
    }

    /// Ends every open stream (the process is stopping).
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }
}
