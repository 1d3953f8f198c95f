//! What every proxy runs, kept durably (DESIGN §7): connections, and per resource type the version
//! sent, the version acknowledged and the last refusal with Envoy's `error_detail`.
//!
//! Streams hand their observations to a [`Recorder`], which never blocks them; one writer task
//! applies them in batches (one transaction per batch, one statement per table), so a push to
//! thousands of proxies costs a handful of statements, not one transaction per ACK. Acceptances
//! and refusals also go to `proxy_transitions`, the history that answers what a proxy ran when.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::replicas::{Held, Replica, ReplicaSettings};

/// The most observations written in one transaction.
const BATCH: usize = 2_000;

/// The protocol a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// State of the World.
    Sotw,
    /// Incremental (delta).
    Delta,
}

impl Protocol {
    /// Its name in the status tables and API.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }
}

/// A proxy that opened a stream.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its `node.id`.
    pub node_id: String,
    /// The group it gets its configuration from.
    pub group: String,
    /// Its `node.cluster`.
    pub node_cluster: String,
    /// The Envoy version it reports.
    pub envoy_version: Option<String>,
    /// The protocol of the stream.
    pub protocol: Protocol,
}

/// One observation of a stream.
#[derive(Debug, Clone)]
enum Observation {
    Opened(Connection, DateTime<Utc>),
    Closed {
        tenant_id: Uuid,
        node_id: String,
        at: DateTime<Utc>,
    },
    Type {
        tenant_id: Uuid,
        node_id: Arc<str>,
        type_url: &'static str,
        outcome: Outcome,
        version: String,
        revision: u64,
        at: DateTime<Utc>,
    },
}

/// What happened to a version of one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server sent it.
    Sent,
    /// The proxy accepted it.
    Acked,
    /// The proxy refused it, with Envoy's error text.
    Nacked(String),
}

/// Hands observations to the writer task; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Recorder {
    sender: mpsc::UnboundedSender<Observation>,
}

impl Recorder {
    /// Starts the writer task on `pool`; it stops when every recorder is dropped, after writing
    /// what it holds.
    ///
    /// The writer also keeps this replica's lease (`replica`, announced as `settings` say) and
    /// reaps the leases of replicas that died.
    pub fn spawn(pool: PgPool, replica: Uuid, settings: watch::Receiver<ReplicaSettings>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(pool, receiver, Replica::new(replica, settings)));
        Self { sender }
    }

    /// A proxy opened a stream.
    pub fn opened(&self, connection: Connection) {
        let _ = self
            .sender
            .send(Observation::Opened(connection, Utc::now()));
    }

    /// A proxy's stream ended.
    pub fn closed(&self, tenant_id: Uuid, node_id: &str) {
        let _ = self.sender.send(Observation::Closed {
            tenant_id,
            node_id: node_id.to_owned(),
            at: Utc::now(),
        });
    }

    /// A version of `type_url` was sent, accepted or refused.
    pub fn type_outcome(
        &self,
        tenant_id: Uuid,
        node_id: &Arc<str>,
        type_url: &'static str,
        outcome: Outcome,
        version: &str,
        revision: u64,
    ) {
        let _ = self.sender.send(Observation::Type {
            tenant_id,
            node_id: node_id.clone(),
            type_url,
            outcome,
            version: version.to_owned(),
            revision,
            at: Utc::now(),
        });
    }
}

async fn write_loop(
    pool: PgPool,
    mut receiver: mpsc::UnboundedReceiver<Observation>,
    mut replica: Replica,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut period = replica.renewal();
    let mut renewal = tokio::time::interval(period);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            count = receiver.recv_many(&mut batch, BATCH) => {
                if count == 0 {
                    if let Err(error) = replica.release(&pool).await {
                        tracing::warn!(%error, "releasing this replica's lease failed; it expires instead");
                    }
                    return;
                }
                write_with_retries(&pool, &batch, &mut replica).await;
                batch.clear();
            }
            _ = renewal.tick() => {
                if let Err(error) = replica.renew(&pool).await {
                    tracing::warn!(%error, "renewing this replica's lease failed; retrying");
                }
                if replica.renewal() != period {
                    period = replica.renewal();
                    renewal = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
        }
    }
}

async fn write_with_retries(pool: &PgPool, batch: &[Observation], replica: &mut Replica) {
    let changes = stream_changes(batch);
    let mut attempt = 0;
    loop {
        match write_batch(pool, batch, &changes, replica).await {
            Ok(()) => return,
            Err(error) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(%error, attempt, "recording proxy status failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(error) => {
                tracing::error!(%error, observations = batch.len(), "proxy status observations lost");
                // The streams did open and close: what this replica holds is written back whole
                // at its next renewal.
                let held = after(&replica.held, &changes);
                hold(&mut replica.held, &held);
                replica.stale = true;
                return;
            }
        }
    }
}

/// Streams opened minus streams closed in `batch`, per proxy.
fn stream_changes(batch: &[Observation]) -> HashMap<(Uuid, String), i32> {
    let mut changes: HashMap<(Uuid, String), i32> = HashMap::new();
    for observation in batch {
        match observation {
            Observation::Opened(connection, _) => {
                *changes
                    .entry((connection.tenant_id, connection.node_id.clone()))
                    .or_default() += 1;
            }
            Observation::Closed {
                tenant_id, node_id, ..
            } => *changes.entry((*tenant_id, node_id.clone())).or_default() -= 1,
            Observation::Type { .. } => {}
        }
    }
    changes
}

/// This replica's streams of each proxy `changes` touches, once they are applied.
fn after(held: &Held, changes: &HashMap<(Uuid, String), i32>) -> Vec<((Uuid, String), i32)> {
    changes
        .iter()
        .map(|(key, change)| {
            let now = held.get(key).copied().unwrap_or(0).saturating_add(*change);
            (key.clone(), now.max(0))
        })
        .collect()
}

/// Makes `held` say what `after` says.
fn hold(held: &mut Held, after: &[((Uuid, String), i32)]) {
    for (key, streams) in after {
        if *streams > 0 {
            held.insert(key.clone(), *streams);
        } else {
            held.remove(key);
        }
    }
}

/// The state of one proxy after the batch, coalesced.
struct ProxyRow {
    connection: Option<(Connection, DateTime<Utc>)>,
    closed_at: Option<DateTime<Utc>>,
    last_seen: DateTime<Utc>,
}

#[derive(Default)]
struct StatusRow {
    sent: Option<(String, u64, DateTime<Utc>)>,
    acked: Option<(String, u64, DateTime<Utc>)>,
    nacked: Option<(String, u64, DateTime<Utc>, String)>,
}

#[allow(clippy::too_many_lines)]
async fn write_batch(
    pool: &PgPool,
    batch: &[Observation],
    counts: &HashMap<(Uuid, String), i32>,
    replica: &mut Replica,
) -> Result<(), sqlx::Error> {
    // Stream counts move by increments, so replicas that each hold some of a proxy's streams (or
    // one it moved between) agree.
    let mut proxies: HashMap<(Uuid, String), ProxyRow> = HashMap::new();
    let mut statuses: HashMap<(Uuid, Arc<str>, &'static str), StatusRow> = HashMap::new();
    let mut transitions = Transitions::default();
    for observation in batch {
        match observation {
            Observation::Opened(connection, at) => {
                let key = (connection.tenant_id, connection.node_id.clone());
                let row = proxies.entry(key).or_insert(ProxyRow {
                    connection: None,
                    closed_at: None,
                    last_seen: *at,
                });
                row.connection = Some((connection.clone(), *at));
                row.last_seen = *at;
            }
            Observation::Closed {
                tenant_id,
                node_id,
                at,
            } => {
                let key = (*tenant_id, node_id.clone());
                let row = proxies.entry(key).or_insert(ProxyRow {
                    connection: None,
                    closed_at: None,
                    last_seen: *at,
                });
                row.closed_at = Some(*at);
                row.last_seen = *at;
            }
            Observation::Type {
                tenant_id,
                node_id,
                type_url,
                outcome,
                version,
                revision,
                at,
            } => {
                let row = statuses
                    .entry((*tenant_id, node_id.clone(), *type_url))
                    .or_default();
                match outcome {
                    Outcome::Sent => row.sent = Some((version.clone(), *revision, *at)),
                    Outcome::Acked => {
                        row.acked = Some((version.clone(), *revision, *at));
                        transitions.push(
                            *tenant_id, node_id, type_url, *at, "acked", version, *revision, None,
                        );
                    }
                    Outcome::Nacked(error) => {
                        row.nacked = Some((version.clone(), *revision, *at, error.clone()));
                        transitions.push(
                            *tenant_id,
                            node_id,
                            type_url,
                            *at,
                            "nacked",
                            version,
                            *revision,
                            Some(error.clone()),
                        );
                    }
                }
            }
        }
    }

    let mut tx = Scope::System.begin(pool).await?;
    if !replica.hold(&mut tx).await? {
        // The lease was reaped (or what it recorded is stale): take it again first.
        tx.rollback().await?;
        replica.renew(pool).await?;
        tx = Scope::System.begin(pool).await?;
        if !replica.hold(&mut tx).await? {
            return Err(sqlx::Error::Protocol(
                "this replica's lease vanished as it was taken".into(),
            ));
        }
    }
    // Proxies opened in this batch: insert them or refresh their connection facts.
    let mut opened = ProxyColumns::default();
    let mut touched = Touched::default();
    for (key, row) in &proxies {
        if let Some((connection, at)) = &row.connection {
            opened.push(connection, *at);
        }
        touched.tenant.push(key.0);
        touched.node.push(key.1.clone());
        touched.change.push(counts.get(key).copied().unwrap_or(0));
        touched.closed_at.push(row.closed_at);
        touched.seen.push(row.last_seen);
    }
    if !opened.tenant.is_empty() {
        sqlx::query!(
            r#"INSERT INTO proxies (tenant_id, node_id, group_name, node_cluster, envoy_version, protocol,
                                    streams, connected_at, last_seen_at)
               SELECT t, n, g, c, v, p, 0, at, at
               FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::timestamptz[]) AS u(t, n, g, c, v, p, at)
               ON CONFLICT (tenant_id, node_id) DO UPDATE
               SET group_name = EXCLUDED.group_name, node_cluster = EXCLUDED.node_cluster,
                   envoy_version = EXCLUDED.envoy_version, protocol = EXCLUDED.protocol,
                   connected_at = EXCLUDED.connected_at"#,
            &opened.tenant,
            &opened.node,
            &opened.group,
            &opened.cluster,
            &opened.version as &[Option<String>],
            &opened.protocol,
            &opened.connected_at,
        )
        .execute(&mut *tx)
        .await?;
    }
    if !touched.tenant.is_empty() {
        sqlx::query!(
            r#"UPDATE proxies p
               SET streams = greatest(p.streams + c.change, 0),
                   disconnected_at = CASE WHEN greatest(p.streams + c.change, 0) = 0
                                          THEN coalesce(c.closed_at, p.disconnected_at) END,
                   last_seen_at = greatest(p.last_seen_at, c.seen)
               FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[])
                    AS c(tenant_id, node_id, change, closed_at, seen)
               WHERE p.tenant_id = c.tenant_id AND p.node_id = c.node_id"#,
            &touched.tenant,
            &touched.node,
            &touched.change,
            &touched.closed_at as &[Option<DateTime<Utc>>],
            &touched.seen,
        )
        .execute(&mut *tx)
        .await?;
    }
    if !statuses.is_empty() {
        let mut c = StatusColumns::default();
        for ((tenant, node, type_url), row) in statuses {
            c.push(tenant, node.to_string(), type_url.to_owned(), row);
        }
        sqlx::query!(
            r#"INSERT INTO proxy_resource_status AS s (tenant_id, node_id, type_url,
                   sent_version, sent_revision, sent_at, acked_version, acked_revision, acked_at,
                   nacked_version, nacked_revision, nacked_at, error_detail)
               SELECT u.* FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                   $6::timestamptz[], $7::text[], $8::bigint[], $9::timestamptz[], $10::text[], $11::bigint[],
                   $12::timestamptz[], $13::text[])
                   AS u(tenant_id, node_id, type_url, sv, sr, sa, av, ar, aa, nv, nr, na, err)
               WHERE EXISTS (SELECT 1 FROM proxies p WHERE p.tenant_id = u.tenant_id AND p.node_id = u.node_id)
               ON CONFLICT (tenant_id, node_id, type_url) DO UPDATE
               SET sent_version = coalesce(EXCLUDED.sent_version, s.sent_version),
                   sent_revision = coalesce(EXCLUDED.sent_revision, s.sent_revision),
                   sent_at = coalesce(EXCLUDED.sent_at, s.sent_at),
                   acked_version = coalesce(EXCLUDED.acked_version, s.acked_version),
                   acked_revision = coalesce(EXCLUDED.acked_revision, s.acked_revision),
                   acked_at = coalesce(EXCLUDED.acked_at, s.acked_at),
                   nacked_version = coalesce(EXCLUDED.nacked_version, s.nacked_version),
                   nacked_revision = coalesce(EXCLUDED.nacked_revision, s.nacked_revision),
                   nacked_at = coalesce(EXCLUDED.nacked_at, s.nacked_at),
                   error_detail = coalesce(EXCLUDED.error_detail, s.error_detail)"#,
            &c.tenant,
            &c.node,
            &c.type_url,
            &c.sent_version as &[Option<String>],
            &c.sent_revision as &[Option<i64>],
            &c.sent_at as &[Option<DateTime<Utc>>],
            &c.acked_version as &[Option<String>],
            &c.acked_revision as &[Option<i64>],
            &c.acked_at as &[Option<DateTime<Utc>>],
            &c.nacked_version as &[Option<String>],
            &c.nacked_revision as &[Option<i64>],
            &c.nacked_at as &[Option<DateTime<Utc>>],
            &c.error as &[Option<String>],
        )
        .execute(&mut *tx)
        .await?;
    }
    if !transitions.tenant.is_empty() {
        sqlx::query!(
            r#"INSERT INTO proxy_transitions (tenant_id, node_id, type_url, at, outcome, version, revision, error_detail)
               SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                                    $7::bigint[], $8::text[])"#,
            &transitions.tenant,
            &transitions.node,
            &transitions.type_url,
            &transitions.at,
            &transitions.outcome,
            &transitions.version,
            &transitions.revision,
            &transitions.error as &[Option<String>],
        )
        .execute(&mut *tx)
        .await?;
    }
    let held = after(&replica.held, counts);
    replica.record(&mut tx, &held).await?;
    tx.commit().await?;
    hold(&mut replica.held, &held);
    Ok(())
}

/// Every proxy a batch touched: its stream count change, last close and last sighting.
#[derive(Default)]
struct Touched {
    tenant: Vec<Uuid>,
    node: Vec<String>,
    change: Vec<i32>,
    closed_at: Vec<Option<DateTime<Utc>>>,
    seen: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct ProxyColumns {
    tenant: Vec<Uuid>,
    node: Vec<String>,
    group: Vec<String>,
    cluster: Vec<String>,
    version: Vec<Option<String>>,
    protocol: Vec<String>,
    connected_at: Vec<DateTime<Utc>>,
}

impl ProxyColumns {
    fn push(&mut self, connection: &Connection, at: DateTime<Utc>) {
        self.tenant.push(connection.tenant_id);
        self.node.push(connection.node_id.clone());
        self.group.push(connection.group.clone());
        self.cluster.push(connection.node_cluster.clone());
        self.version.push(connection.envoy_version.clone());
        self.protocol.push(connection.protocol.as_str().to_owned());
        self.connected_at.push(at);
    }
}

#[derive(Default)]
struct StatusColumns {
    tenant: Vec<Uuid>,
    node: Vec<String>,
    type_url: Vec<String>,
    sent_version: Vec<Option<String>>,
    sent_revision: Vec<Option<i64>>,
    sent_at: Vec<Option<DateTime<Utc>>>,
    acked_version: Vec<Option<String>>,
    acked_revision: Vec<Option<i64>>,
    acked_at: Vec<Option<DateTime<Utc>>>,
    nacked_version: Vec<Option<String>>,
    nacked_revision: Vec<Option<i64>>,
    nacked_at: Vec<Option<DateTime<Utc>>>,
    error: Vec<Option<String>>,
}

impl StatusColumns {
    fn push(&mut self, tenant: Uuid, node: String, type_url: String, row: StatusRow) {
        self.tenant.push(tenant);
        self.node.push(node);
        self.type_url.push(type_url);
        let (v, r, a) = split(row.sent);
        self.sent_version.push(v);
        self.sent_revision.push(r);
        self.sent_at.push(a);
        let (v, r, a) = split(row.acked);
        self.acked_version.push(v);
        self.acked_revision.push(r);
        self.acked_at.push(a);
        let (v, r, a, e) = match row.nacked {
            Some((v, r, a, e)) => (Some(v), Some(to_i64(r)), Some(a), Some(e)),
            None => (None, None, None, None),
        };
        self.nacked_version.push(v);
        self.nacked_revision.push(r);
        self.nacked_at.push(a);
        self.error.push(e);
    }
}

type Split = (Option<String>, Option<i64>, Option<DateTime<Utc>>);

fn split(value: Option<(String, u64, DateTime<Utc>)>) -> Split {
    match value {
        Some((version, revision, at)) => (Some(version), Some(to_i64(revision)), Some(at)),
        None => (None, None, None),
    }
}

fn to_i64(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

#[derive(Default)]
struct Transitions {
    tenant: Vec<Uuid>,
    node: Vec<String>,
    type_url: Vec<String>,
    at: Vec<DateTime<Utc>>,
    outcome: Vec<String>,
    version: Vec<String>,
    revision: Vec<i64>,
    error: Vec<Option<String>>,
}

impl Transitions {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        tenant: Uuid,
        node: &str,
        type_url: &str,
        at: DateTime<Utc>,
        outcome: &str,
        version: &str,
        revision: u64,
        error: Option<String>,
    ) {
        self.tenant.push(tenant);
        self.node.push(node.to_owned());
        self.type_url.push(type_url.to_owned());
        self.at.push(at);
        self.outcome.push(outcome.to_owned());
        self.version.push(version.to_owned());
        self.revision.push(to_i64(revision));
        self.error.push(error);
    }
}
