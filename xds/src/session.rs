//! What every stream shares: the server's parts, and opening a stream for a proxy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use efms_commands::Scope;
use efms_domain::envoy::ResourceKind;
use efms_projections::snapshots::XDS_KINDS;
use efms_projections::{GroupSnapshot, SnapshotStore};
use envoy_types::pb::envoy::config::core::v3::Node;
use sqlx::PgPool;
use tokio::sync::watch;
use tonic::Status;
use uuid::Uuid;

use crate::credentials::{CredentialWatch, WatchedCredential};
use crate::identity::{Authenticator, Credentials, NodeInfo, GROUP_KEY};
use crate::metrics::{TypeLabels, XdsMetrics};
use crate::status::{Connection, Protocol, Recorder};
use prometheus_client::metrics::counter::Counter;

/// How long an xDS server trusts the `proxies` quota it read for a tenant.
pub const PROXY_LIMIT_TTL: Duration = Duration::from_secs(5);
/// How long whether a tenant is suspended is trusted before a new stream reads it again.
pub const TENANT_STANDING_TTL: Duration = Duration::from_secs(2);

/// Everything the xDS services share. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    store: SnapshotStore,
    authenticator: Authenticator,
    /// The users and proxy tokens of the open streams, checked every few seconds.
    credentials: Arc<CredentialWatch>,
    recorder: Recorder,
    /// How this replica announces itself in its lease.
    replica: watch::Sender<crate::replicas::ReplicaSettings>,
    metrics: XdsMetrics,
    nonces: AtomicU64,
    /// Whether each tenant seen is suspended, and when that was read.
    tenant_standing: Mutex<HashMap<Uuid, (Instant, Standing)>>,
    /// Each tenant's `proxies` quota as last read, and when.
    proxy_limits: Mutex<HashMap<Uuid, (Instant, Option<i64>)>>,
    identifier: String,
    stopping: watch::Sender<bool>,
    /// The agents' streams served beside the proxies' on the same listener, once attached.
    fleet: std::sync::OnceLock<crate::fleet::FleetServer>,
    /// The proxies' statistics streams, once attached.
    telemetry: std::sync::OnceLock<crate::telemetry::TelemetryServer>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer").finish_non_exhaustive()
    }
}

impl XdsServer {
    /// The xDS server over `store`'s snapshots; proxy status is recorded through `pool`.
    pub fn new(
        pool: PgPool,
        store: SnapshotStore,
        authenticator: Authenticator,
        metrics: XdsMetrics,
    ) -> Self {
        let replica = watch::Sender::new(crate::replicas::ReplicaSettings::default());
        let recorder = Recorder::spawn(pool.clone(), Uuid::new_v4(), replica.subscribe());
        let credentials = CredentialWatch::spawn(pool.clone());
        Self {
            inner: Arc::new(Inner {
                pool,
                store,
                authenticator,
                credentials,
                recorder,
                replica,
                metrics,
                nonces: AtomicU64::new(0),
                tenant_standing: Mutex::default(),
                proxy_limits: Mutex::default(),
                identifier: format!("efms {}", env!("CARGO_PKG_VERSION")),
                stopping: watch::Sender::new(false),
                fleet: std::sync::OnceLock::new(),
                telemetry: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Ends every open stream with UNAVAILABLE (proxies reconnect, to this replica when it is back
    /// or to another), and refuses new ones.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
        if let Some(fleet) = self.fleet() {
            fleet.stop();
        }
        if let Some(telemetry) = self.telemetry() {
            telemetry.stop();
        }
    }

    /// Announces this replica with `settings`: its lease (how soon its proxies read
    /// DISCONNECTED if it dies) and the address bootstraps list for it.
    pub fn set_replica(&self, settings: crate::replicas::ReplicaSettings) {
        self.inner.replica.send_replace(settings);
    }

    /// Takes the proxies' statistics streams on the same listener (once; later calls are
    /// ignored).
    pub fn attach_telemetry(&self, telemetry: crate::telemetry::TelemetryServer) {
        let _ = self.inner.telemetry.set(telemetry);
    }

    /// The proxies' statistics streams, when attached.
    pub fn telemetry(&self) -> Option<&crate::telemetry::TelemetryServer> {
        self.inner.telemetry.get()
    }

    /// Serves the agents' streams of `fleet` on the same listener (once; later calls are ignored).
    pub fn attach_fleet(&self, fleet: crate::fleet::FleetServer) {
        let _ = self.inner.fleet.set(fleet);
    }

    /// The agents' streams, when attached.
    pub fn fleet(&self) -> Option<&crate::fleet::FleetServer> {
        self.inner.fleet.get()
    }

    /// Resolves once [`XdsServer::stop`] was called.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.inner.stopping.subscribe();
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    pub(crate) fn authenticator(&self) -> &Authenticator {
        &self.inner.authenticator
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Re-checks the users and proxy tokens of open streams every `interval` (five seconds unless
    /// set): a stream whose user was deleted or changed, or whose proxy token was revoked, ends
    /// within that time.
    pub fn set_credential_recheck(&self, interval: Duration) {
        self.inner.credentials.set_interval(interval);
        if let Some(fleet) = self.fleet() {
            fleet.update(|settings| settings.recheck = interval);
        }
    }

    /// Re-checks the users and proxy tokens of open streams now: call it after deleting or
    /// changing a user or revoking a proxy token, so that this replica's streams end at once.
    pub fn recheck_credentials(&self) {
        self.inner.credentials.check_now();
    }

    pub(crate) fn metrics(&self) -> &XdsMetrics {
        &self.inner.metrics
    }

    pub(crate) fn identifier(&self) -> &str {
        &self.inner.identifier
    }

    /// A nonce unique in this process.
    pub(crate) fn nonce(&self) -> String {
        self.inner
            .nonces
            .fetch_add(1, Ordering::Relaxed)
            .to_string()
    }

    /// Who sent `node` with `credentials`: its tenant (which must exist) and group, and what
    /// ends its stream (the token's expiry or withdrawal, watched from now on).
    pub(crate) async fn identify(
        &self,
        credentials: &Credentials,
        node: Option<&Node>,
    ) -> Result<Identity, Status> {
        let info = NodeInfo::from_node(node)?;
        let (slug, tenant_id) = info.tenant(&credentials.actor)?;
        // Registered before the last checks, so that a withdrawal from now on ends the stream.
        let credential = credentials
            .revocable
            .map(|revocable| self.inner.credentials.register(revocable));
        let tenant = self
            .inner
            .credentials
            .register(efms_commands::credentials::Revocable::Tenant { tenant_id });
        let bound = credentials
            .group
            .as_deref()
            .map(|group| info.bound_group(group))
            .transpose()?;
        self.check_tenant(tenant_id, slug.as_str()).await?;
        let group = match bound.or_else(|| info.metadata.get(GROUP_KEY).cloned()) {
            Some(group) => group,
            None => self
                .inner
                .store
                .resolve_group(tenant_id, &info.cluster, &info.metadata)
                .await
                .map_err(unavailable)?
                .or_else(|| (!info.cluster.is_empty()).then(|| info.cluster.clone()))
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "no group: set node metadata `group`, or node.cluster, or a group selector that matches",
                    )
                })?,
        };
        let lapse = Lapse {
            credential,
            tenant,
            expiry: credentials.expires_at.map(|at| {
                let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                (at, Box::pin(tokio::time::sleep(left)))
            }),
        };
        Ok(Identity {
            info,
            slug,
            tenant_id,
            group,
            lapse,
        })
    }

    /// Opens the stream of the proxy that sent `node`, for the holder of `credentials`.
    pub(crate) async fn open(
        &self,
        credentials: &Credentials,
        node: Option<&Node>,
        protocol: Protocol,
    ) -> Result<Session, Status> {
        if *self.inner.stopping.borrow() {
            return Err(Status::unavailable("the control plane is shutting down"));
        }
        let Identity {
            info,
            slug,
            tenant_id,
            group,
            lapse,
        } = self.identify(credentials, node).await?;
        self.check_proxy_quota(tenant_id, slug.as_str(), &info.node_id)
            .await?;
        let snapshot = self
            .inner
            .store
            .watch(tenant_id, &group)
            .await
            .map_err(unavailable)?;
        let connection = Connection {
            tenant_id,
            node_id: info.node_id,
            group,
            node_cluster: info.cluster,
            envoy_version: info.envoy_version,
            protocol,
        };
        tracing::info!(tenant = %slug, node = connection.node_id, group = connection.group,
            protocol = protocol.as_str(), envoy = connection.envoy_version, "proxy connected");
        self.inner.recorder.opened(connection.clone());
        self.inner.metrics.streams.inc();
        let counters = XDS_KINDS
            .into_iter()
            .map(|kind| {
                let labels = TypeLabels {
                    kind: kind.to_string(),
                    protocol: protocol.as_str().to_owned(),
                };
                (
                    kind,
                    self.inner.metrics.pushes.get_or_create(&labels).clone(),
                    self.inner.metrics.nacks.get_or_create(&labels).clone(),
                )
            })
            .collect();
        Ok(Session {
            server: self.clone(),
            node: Arc::from(connection.node_id.as_str()),
            connection,
            snapshot,
            counters,
            lapse,
        })
    }

    /// Refuses a proxy that would go over its tenant's `proxies` quota. The quota itself is read
    /// at most every [`PROXY_LIMIT_TTL`], so that opening streams of unlimited tenants costs the
    /// database nothing; connections are counted only when there is a limit.
    async fn check_proxy_quota(
        &self,
        tenant_id: Uuid,
        slug: &str,
        node_id: &str,
    ) -> Result<(), Status> {
        let cached = self
            .inner
            .proxy_limits
            .lock()
            .expect("proxy limits lock")
            .get(&tenant_id)
            .filter(|(read_at, _)| read_at.elapsed() < PROXY_LIMIT_TTL)
            .map(|(_, limit)| *limit);
        let limit = if let Some(limit) = cached {
            limit
        } else {
            let limit = efms_projections::proxies::proxy_limit(&self.inner.pool, tenant_id)
                .await
                .map_err(unavailable)?;
            self.inner
                .proxy_limits
                .lock()
                .expect("proxy limits lock")
                .insert(tenant_id, (Instant::now(), limit));
            limit
        };
        if limit.is_none() {
            return Ok(());
        }
        let over =
            efms_projections::proxies::over_proxy_quota(&self.inner.pool, tenant_id, node_id)
                .await
                .map_err(unavailable)?;
        match over {
            Some((limit, connected)) => Err(Status::resource_exhausted(format!(
                "quota `proxies` ({limit}) of tenant `{slug}` is reached: {connected} proxies are connected"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a stream of a tenant that does not exist, is suspended or is deleted. What was
    /// read is kept for [`TENANT_STANDING_TTL`], so that a storm of reconnections costs the
    /// database one read per tenant and period, and a suspension refuses new streams within that
    /// period.
    async fn check_tenant(&self, tenant_id: Uuid, slug: &str) -> Result<(), Status> {
        let cached = self
            .inner
            .tenant_standing
            .lock()
            .expect("tenant standing lock")
            .get(&tenant_id)
            .filter(|(read_at, _)| read_at.elapsed() < TENANT_STANDING_TTL)
            .map(|(_, standing)| *standing);
        let standing = if let Some(standing) = cached {
            standing
        } else {
            let row = efms_projections::tenants::get_tenant(
                &self.inner.pool,
                Scope::Tenant(tenant_id),
                slug,
            )
            .await
            .map_err(unavailable)?;
            let standing = match row {
                None => Standing::Missing,
                Some(row) if row.deleted_at.is_some() => Standing::Deleted,
                Some(row) if row.suspended_at.is_some() => Standing::Suspended,
                Some(_) => Standing::Active,
            };
            self.inner
                .tenant_standing
                .lock()
                .expect("tenant standing lock")
                .insert(tenant_id, (Instant::now(), standing));
            standing
        };
        match standing {
            Standing::Active => Ok(()),
            Standing::Missing => Err(Status::not_found(format!("there is no tenant `{slug}`"))),
            Standing::Suspended => Err(Status::permission_denied(format!(
                "tenant `{slug}` is suspended: new proxy streams are refused until it is resumed"
            ))),
            Standing::Deleted => Err(Status::permission_denied(format!(
                "tenant `{slug}` is deleted: its proxy streams are refused"
            ))),
        }
    }
}

/// Whether a tenant's proxies may open streams, as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// They may.
    Active,
    /// The tenant does not exist (or was purged).
    Missing,
    /// The tenant is suspended.
    Suspended,
    /// The tenant is deleted.
    Deleted,
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(unavailable)`
fn unavailable(error: sqlx::Error) -> Status {
    tracing::error!(%error, "the xDS server cannot read the store");
    Status::unavailable("the configuration store is unavailable; retry")
}

/// Who a proxy is, as its first message and token say.
pub(crate) struct Identity {
    /// Its node.
    pub info: NodeInfo,
    /// Its tenant.
    pub slug: efms_domain::TenantSlug,
    /// Its tenant's id.
    pub tenant_id: Uuid,
    /// Its group.
    pub group: String,
    /// What ends its stream.
    pub lapse: Lapse,
}

/// One proxy's open stream. Dropping it records the disconnection.
pub(crate) struct Session {
    server: XdsServer,
    /// Who is connected.
    pub connection: Connection,
    /// The group's snapshots.
    pub snapshot: watch::Receiver<Arc<GroupSnapshot>>,
    /// The node id, shared by every observation of the stream.
    node: Arc<str>,
    /// Push and NACK counters per kind, looked up once per stream.
    counters: Vec<(ResourceKind, Counter, Counter)>,
    /// What ends the stream: its token's expiry or withdrawal.
    pub lapse: Lapse,
}

/// What ends a stream before the proxy or the server does.
pub(crate) struct Lapse {
    /// The user or proxy token the stream's token names, watched for withdrawal.
    credential: Option<WatchedCredential>,
    /// The stream's tenant, watched for its deletion.
    tenant: WatchedCredential,
    /// When the stream's token expires, and the timer set for then (set once per stream, not
    /// once per wait: a stream waits again after every message).
    expiry: Option<(
        chrono::DateTime<chrono::Utc>,
        std::pin::Pin<Box<tokio::time::Sleep>>,
    )>,
}

impl Lapse {
    /// Resolves, with the status that ends the stream, when its token expires or is withdrawn.
    pub async fn lapsed(&mut self) -> Status {
        let expiry = async {
            match &mut self.expiry {
                Some((at, timer)) => {
                    timer.as_mut().await;
                    token_expired(*at)
                }
                None => std::future::pending().await,
            }
        };
        let withdrawal = async {
            match &mut self.credential {
                Some(credential) => credential.withdrawn().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = expiry => status,
            status = withdrawal => status,
            status = self.tenant.withdrawn() => status,
        }
    }
}

impl Session {
    /// Records what happened to a version of `kind`.
    pub fn record(
        &self,
        kind: ResourceKind,
        outcome: crate::status::Outcome,
        version: &str,
        revision: u64,
    ) {
        let counters = self.counters.iter().find(|(k, _, _)| *k == kind);
        match &outcome {
            crate::status::Outcome::Sent => {
                if let Some((_, pushes, _)) = counters {
                    pushes.inc();
                }
            }
            crate::status::Outcome::Nacked(error) => {
                if let Some((_, _, nacks)) = counters {
                    nacks.inc();
                }
                tracing::warn!(node = self.connection.node_id, %kind, version, error, "proxy refused configuration");
            }
            crate::status::Outcome::Acked => {}
        }
        self.server.inner.recorder.type_outcome(
            self.connection.tenant_id,
            &self.node,
            static_type_url(kind),
            outcome,
            version,
            revision,
        );
    }

    pub fn server(&self) -> &XdsServer {
        &self.server
    }
}

/// The status of a stream whose token expired at `at`.
pub(crate) fn token_expired(at: chrono::DateTime<chrono::Utc>) -> Status {
    Status::unauthenticated(format!(
        "the token expired at {}; connect again with a new one",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.inner.metrics.streams.dec();
        self.server
            .inner
            .recorder
            .closed(self.connection.tenant_id, &self.connection.node_id);
        tracing::info!(node = self.connection.node_id, "proxy disconnected");
    }
}

/// The type URL of an Envoy kind, without allocating.
pub(crate) fn static_type_url(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        ResourceKind::Endpoints => {
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        }
        ResourceKind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
        ResourceKind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        ResourceKind::Secret => {
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        }
        ResourceKind::Group | ResourceKind::Template => "",
    }
}

/// The Envoy kind of a type URL we serve.
pub(crate) fn kind_of(type_url: &str) -> Option<ResourceKind> {
    XDS_KINDS
        .into_iter()
        .find(|kind| static_type_url(*kind) == type_url)
}

/// Whether an empty subscription of `kind` means "everything" (listeners and clusters).
pub(crate) fn wildcard_by_default(kind: ResourceKind) -> bool {
    matches!(kind, ResourceKind::Cluster | ResourceKind::Listener)
}

/// Kinds whose removals wait until listeners and routes no longer need them.
pub(crate) fn removal_waits_for_dependents(kind: ResourceKind) -> bool {
    matches!(
        kind,
        ResourceKind::Cluster | ResourceKind::Endpoints | ResourceKind::Secret
    )
}
