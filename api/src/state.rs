//! What the handlers share ([`AppState`]) and where proxies reach the xDS server ([`XdsAddress`]).
//!
//! A leaf: it imports no route module and not the router, so route modules and middleware take
//! the state from here without an import circle through [`crate::app`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use efms_commands::{CommandBus, CommitBell, Keyring};
use efms_projections::{
    ConfigProjection, Projector, ProjectorHandle, ResourceCache, SnapshotStore, TenantsProjection,
};
use efms_xds::XdsServer;
use sqlx::PgPool;

use crate::anonymous_budget::AnonymousBudget;
use crate::auth::tokens::JwtKeys;
use crate::credentials::TokenSettings;
use crate::known_tenants::KnownTenants;
use crate::metrics::Metrics;

/// What the handlers share: one allocation, so that the clone every request, extractor and
/// middleware makes costs a reference count, whatever the state holds.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// A handle that does not keep the state alive (for what the state itself holds).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.0)
    }

    /// The state behind `handle`, while it lives.
    pub(crate) fn upgrade(handle: &std::sync::Weak<Shared>) -> Option<Self> {
        handle.upgrade().map(Self)
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

impl FromRef<AppState> for crate::read_replica::ReadRouting {
    fn from_ref(state: &AppState) -> Self {
        state.reads.clone()
    }
}

impl FromRef<AppState> for crate::database_watch::DatabaseWatch {
    fn from_ref(state: &AppState) -> Self {
        state.database.clone()
    }
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// The parts of [`AppState`]. Each handler uses only the part it needs.
pub struct Shared {
    /// The database pool (connections switch to a scoped role per transaction).
    pub pool: PgPool,
    /// Where reads go: a read replica once it has caught up, else `pool`.
    pub reads: crate::read_replica::ReadRouting,
    /// Whether the database answers: while it does not, requests fail fast.
    pub database: crate::database_watch::DatabaseWatch,
    /// Executes commands and rings the log readers' doorbell after each commit.
    pub bus: CommandBus,
    /// Wakes the event feed's live readers after commits (and at each polling interval).
    pub doorbell: efms_commands::SharedDoorbell,
    /// The live tails of the tenants' feeds, which every live reader of the process shares.
    pub live_feed: crate::live_feed::LiveFeed,
    /// Resolves when the process stops: live event streams end then.
    pub stopping: StopSignal,
    /// Token keys.
    pub jwt: JwtKeys,
    /// Tenants known to exist.
    pub known_tenants: KnownTenants,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The tenant registry's projector, for read-your-writes.
    pub tenants: ProjectorHandle,
    /// The configuration read models' projector, for read-your-writes.
    pub config: ProjectorHandle,
    /// The fleet's writes: VM registrations, join tokens, removals.
    pub fleet: efms_commands::fleet::Fleet,
    /// The fleet's read models' projector, for read-your-writes.
    pub fleet_view: ProjectorHandle,
    /// The rollouts' read model: its position, for writers to wait on.
    pub rollout_view: ProjectorHandle,
    /// How long deleted tenants are kept before their purge (the purge follows changes).
    pub tenant_purge: tokio::sync::watch::Sender<efms_commands::tenant_purge::PurgeSettings>,
    /// The settings of the fleet's upkeep (heartbeat grace, sample retention).
    pub fleet_upkeep: tokio::sync::watch::Sender<efms_commands::fleet::upkeep::UpkeepSettings>,
    /// The xDS snapshots of the groups proxies follow.
    pub snapshots: SnapshotStore,
    /// Current resources, cached in the process.
    pub cache: ResourceCache,
    /// The xDS services, served by `efms_xds::serve`.
    pub xds: XdsServer,
    /// Where proxies reach the xDS server (written into bootstraps).
    pub xds_address: XdsAddress,
    /// The tenants' data keys, which seal secret material before it is stored.
    pub keyring: Keyring,
    /// The configuration write pipeline: every commit goes through it.
    pub configuration: efms_commands::configuration::ConfigService,
    /// Work requests started that outlives them (bulk jobs), finished before the process stops.
    pub background: crate::background::BackgroundWork,
    /// Recent failed logins, which slow down password guessing.
    pub login_throttle: crate::login_throttle::LoginThrottle,
    /// How many anonymous failed requests the audit trail recorded this minute.
    pub anonymous_audit: AnonymousBudget,
    /// Proxy token lifetimes, and how often open xDS streams are re-checked.
    pub tokens: TokenSettings,
    /// Limits on what requests write and run.
    pub limits: crate::limits::WriteLimits,
    /// How webhooks are delivered (the sender follows changes).
    pub webhooks: tokio::sync::watch::Sender<efms_notify::WebhookSettings>,
    /// How alert rules are evaluated (the evaluator follows changes).
    pub alerts: tokio::sync::watch::Sender<efms_notify::AlertSettings>,
}

/// Gives the gRPC server the agents' streams and the proxies' statistics streams.
fn attach_streams(
    xds: &XdsServer,
    fleet: &efms_commands::fleet::Fleet,
    pool: &PgPool,
    metrics: &Metrics,
) {
    xds.attach_fleet(efms_xds::FleetServer::new(
        fleet.clone(),
        efms_xds::FleetStreamSettings::default(),
        metrics.xds.fleet.clone(),
    ));
    xds.attach_telemetry(efms_xds::TelemetryServer::new(
        pool.clone(),
        efms_xds::TelemetrySettings::default(),
        metrics.xds.telemetry.clone(),
    ));
}

/// Keeps the projector-position gauge at the tenant registry projector's checkpoint.
fn follow_position(metrics: &Metrics, tenants: &ProjectorHandle) {
    let gauge = metrics.projector_position.clone();
    let mut checkpoint = tenants.clone();
    tokio::spawn(async move {
        while let Some(position) = checkpoint.changed().await {
            gauge.set(position.global_position);
        }
    });
}

/// Where proxies reach the xDS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAddress {
    /// A host name or IP address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// With TLS: the server's identity, whose certificate chain proxies trust (bootstraps embed
    /// the chain of the moment, so they follow a reload).
    pub tls_ca: Option<efms_xds::tls::TlsIdentity>,
}

impl XdsAddress {
    /// The address proxies dial for a server listening on `listen`: the same, with an unspecified
    /// IP (`0.0.0.0`, `::`) replaced by loopback.
    pub fn for_listener(listen: std::net::SocketAddr) -> Self {
        let ip = if listen.ip().is_unspecified() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            listen.ip()
        };
        Self {
            host: ip.to_string(),
            port: listen.port(),
            tls_ca: None,
        }
    }

    /// `host:port` (an IPv6 host in brackets), as replicas announce themselves.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl AppState {
    /// Starts the background projectors on `pool` (they stop when `shutdown` resolves) and returns
    /// the state the router serves.
    pub fn start(
        pool: PgPool,
        jwt: JwtKeys,
        keyring: Keyring,
        poll_interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        let shutdown = futures_shared(shutdown);
        Self::start_stopping(
            pool,
            jwt,
            keyring,
            poll_interval,
            (shutdown.clone(), shutdown),
        )
    }

    /// As [`AppState::start`], with two moments: `stopping`, when the servers stop taking
    /// requests (live event streams end then), and `retired`, when the requests in flight are
    /// done: the projectors and background work stop only then, so that a write in flight is
    /// answered once its read models show it.
    pub fn start_stopping(
        pool: PgPool,
        jwt: JwtKeys,
        keyring: Keyring,
        poll_interval: Duration,
        (stopping, retired): (StopSignal, StopSignal),
    ) -> Self {
        let metrics = Metrics::new();
        let bus = CommandBus::new(pool.clone(), CommitBell::spawn(&pool));
        let shutdown = retired;
        // One listening connection wakes every projector of the process.
        let doorbell = efms_commands::SharedDoorbell::spawn(&pool, poll_interval);
        let tenants = Projector::new(pool.clone(), TenantsProjection)
            .spawn_with(doorbell.clone(), shutdown.clone());
        let fleet_view = Projector::new(pool.clone(), efms_projections::FleetProjection)
            .spawn_with(doorbell.clone(), shutdown.clone());
        let rollout_view = Projector::new(pool.clone(), efms_projections::RolloutProjection)
            .spawn_with(doorbell.clone(), shutdown.clone());
        let fleet_upkeep = tokio::sync::watch::Sender::new(
            efms_commands::fleet::upkeep::UpkeepSettings::default(),
        );
        let config = Projector::new(pool.clone(), ConfigProjection)
            .spawn_with(doorbell.clone(), shutdown.clone());
        let snapshots = SnapshotStore::new(pool.clone(), keyring.clone());
        snapshots.follow(config.clone());
        let cache = ResourceCache::new(pool.clone(), efms_domain::config::MAIN_BRANCH);
        // Writers wait on the cache's handle, so they read their own writes from it.
        let config = cache.follow(config);
        let configuration = efms_commands::configuration::ConfigService::new(
            pool.clone(),
            bus.clone(),
            keyring.clone(),
            efms_domain::config::limits::Limits::default(),
            Arc::new(crate::config_services::ReadModelsAndMetrics {
                pool: pool.clone(),
                config: config.clone(),
                metrics: metrics.clone(),
            }),
        );
        let xds = XdsServer::new(
            pool.clone(),
            snapshots.clone(),
            crate::credentials::xds_authenticator(jwt.clone()),
            metrics.xds.clone(),
        );
        let tenant_purge =
            tokio::sync::watch::Sender::new(efms_commands::tenant_purge::PurgeSettings::default());
        efms_commands::tenant_purge::spawn(
            pool.clone(),
            tenant_purge.subscribe(),
            shutdown.clone(),
        );
        let fleet = efms_commands::fleet::Fleet::new(pool.clone(), bus.clone());
        efms_commands::fleet::upkeep::spawn(
            fleet.clone(),
            fleet_upkeep.subscribe(),
            shutdown.clone(),
        );
        attach_streams(&xds, &fleet, &pool, &metrics);
        let (webhooks, alerts) = spawn_events_out(&pool, &keyring, &jwt, &doorbell, &shutdown);
        follow_position(&metrics, &tenants);
        let database = crate::database_watch::DatabaseWatch::spawn(
            (*pool.connect_options()).clone(),
            shutdown.clone(),
        );
        Self(Arc::new(Shared {
            reads: crate::read_replica::ReadRouting::new(pool.clone(), &metrics),
            pool,
            database,
            bus,
            doorbell,
            live_feed: crate::live_feed::LiveFeed::default(),
            stopping,
            jwt,
            known_tenants: KnownTenants::default(),
            metrics,
            tenants,
            config,
            fleet,
            fleet_view,
            rollout_view,
            fleet_upkeep,
            tenant_purge,
            snapshots,
            cache,
            xds,
            xds_address: XdsAddress {
                host: "127.0.0.1".to_owned(),
                port: 18000,
                tls_ca: None,
            },
            keyring,
            configuration,
            background: crate::background::BackgroundWork::default(),
            login_throttle: crate::login_throttle::LoginThrottle::default(),
            anonymous_audit: AnonymousBudget::default(),
            tokens: TokenSettings::default(),
            limits: crate::limits::WriteLimits::default(),
            webhooks,
            alerts,
        }))
    }

    /// The parts, while the state is being set up and not shared yet.
    fn setting_up(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.0).expect("settings are applied before the state is shared")
    }

    /// The same state, holding requests to `limits`.
    #[must_use]
    pub fn with_limits(mut self, limits: crate::limits::WriteLimits) -> Self {
        let shared = self.setting_up();
        shared.configuration = shared
            .configuration
            .clone()
            .with_limits(limits.commit)
            .with_warm_repositories(limits.warm_repositories);
        shared.limits = limits;
        self
    }
    /// The same state with these proxy token lifetimes and xDS re-check interval.
    #[must_use]
    pub fn with_token_settings(mut self, tokens: TokenSettings) -> Self {
        self.xds.set_credential_recheck(tokens.recheck_interval);
        self.setting_up().tokens = tokens;
        self
    }

    /// The same state, with the fleet's heartbeat interval, grace and sample retention.
    #[must_use]
    pub fn with_fleet_settings(
        self,
        settings: efms_commands::fleet::upkeep::UpkeepSettings,
    ) -> Self {
        self.fleet_upkeep.send_replace(settings);
        if let Some(fleet) = self.xds.fleet() {
            fleet.update(|streams| streams.heartbeat_interval = settings.heartbeat_interval);
        }
        self
    }

    /// The same state, keeping deleted tenants this long before their purge.
    #[must_use]
    pub fn with_purge_settings(self, settings: efms_commands::tenant_purge::PurgeSettings) -> Self {
        self.tenant_purge.send_replace(settings);
        self
    }

    /// How often bootstrapped proxies send their statistics, unless their bootstrap asks
    /// otherwise.
    pub fn stats_flush_interval(&self) -> std::time::Duration {
        self.xds
            .telemetry()
            .map_or(std::time::Duration::from_secs(10), |telemetry| {
                telemetry.settings().flush_interval
            })
    }

    /// The same state, gathering the proxies' statistics with `settings`.
    #[must_use]
    pub fn with_telemetry_settings(self, settings: efms_xds::TelemetrySettings) -> Self {
        if let Some(telemetry) = self.xds.telemetry() {
            telemetry.update(settings);
        }
        self
    }

    /// The same state, delivering webhooks with `settings`.
    #[must_use]
    pub fn with_webhook_settings(self, settings: efms_notify::WebhookSettings) -> Self {
        self.webhooks.send_replace(settings);
        self
    }

    /// The same state, evaluating alert rules with `settings`.
    #[must_use]
    pub fn with_alert_settings(self, settings: efms_notify::AlertSettings) -> Self {
        self.alerts.send_replace(settings);
        self
    }

    /// The same state, throttling failed logins within `limits`.
    #[must_use]
    pub fn with_login_limits(mut self, limits: crate::login_throttle::ThrottleLimits) -> Self {
        self.setting_up().login_throttle = crate::login_throttle::LoginThrottle::new(limits);
        self
    }

    /// The same state, telling proxies to reach the xDS server at `address`.
    #[must_use]
    pub fn with_xds_address(mut self, address: XdsAddress) -> Self {
        self.setting_up().xds_address = address;
        self
    }
}

/// Starts the webhooks' sender and the alerts' evaluator (each works on one replica at a time,
/// under a lease); answers their settings, which they follow.
fn spawn_events_out(
    pool: &PgPool,
    keyring: &Keyring,
    jwt: &JwtKeys,
    doorbell: &efms_commands::SharedDoorbell,
    shutdown: &StopSignal,
) -> (
    tokio::sync::watch::Sender<efms_notify::WebhookSettings>,
    tokio::sync::watch::Sender<efms_notify::AlertSettings>,
) {
    let webhooks = tokio::sync::watch::Sender::new(efms_notify::WebhookSettings::default());
    efms_notify::spawn(
        efms_notify::sender::Sender {
            pool: pool.clone(),
            keyring: keyring.clone(),
            seal: jwt.cursors().clone(),
        },
        doorbell.clone(),
        webhooks.subscribe(),
        shutdown.clone(),
    );
    let alerts = tokio::sync::watch::Sender::new(efms_notify::AlertSettings::default());
    efms_notify::alerts::spawn(pool.clone(), alerts.subscribe(), shutdown.clone());
    (webhooks, alerts)
}

/// The process's stop: a future that every task ending with the process can await.
pub type StopSignal =
    futures::future::Shared<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// A shutdown future that several tasks can await.
pub fn futures_shared(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> StopSignal {
    use futures::FutureExt as _;
    let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(shutdown);
    boxed.shared()
}
