//! Reads of the fleet: VMs with their presence, containers, their history, and utilisation.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::fleet::Container;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// JSON as Postgres stored it, passed on without being parsed into a tree.
pub type RawJson = Json<Box<RawValue>>;

/// A VM as the read models have it, with what its agent's stream last said. Its JSON columns
/// are kept as the text Postgres gave (a page of a thousand VMs is passed on, not rebuilt).
#[derive(Debug, Clone)]
pub struct VmRow {
    /// Its name.
    pub name: String,
    /// Its labels (a JSON object of strings).
    pub labels: RawJson,
    /// Its region.
    pub region: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
    /// Images whose containers its agent reports (a JSON array of strings).
    pub watch_images: RawJson,
    /// `down`, `ready`, `docker_unreachable` or `removed`.
    pub state: String,
    /// Why it is in that state.
    pub state_reason: String,
    /// Since when.
    pub state_since: DateTime<Utc>,
    /// Its host's facts, once reported.
    pub facts: Option<RawJson>,
    /// When it was registered, and by whom.
    pub registered_at: DateTime<Utc>,
    /// Who registered it.
    pub registered_by: String,
    /// When it was removed.
    pub removed_at: Option<DateTime<Utc>>,
    /// Its stream's last sequence.
    pub version: i64,
    /// Whether an agent's stream is open for it.
    pub connected: Option<bool>,
    /// Its last heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Whether its Docker engine answered at the last heartbeat.
    pub engine_reachable: Option<bool>,
    /// Why it did not.
    pub engine_error: Option<String>,
    /// Its utilisation at the last heartbeat.
    pub usage: Option<RawJson>,
    /// Its containers not gone.
    pub containers: i64,
}

/// How to filter and order VMs.
#[derive(Debug, Clone, Default)]
pub struct VmFilter {
    /// Its name (one VM).
    pub name: Option<String>,
    /// Labels it must carry (a JSON object of strings).
    pub labels: Option<Value>,
    /// Its region.
    pub region: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
    /// Its state.
    pub state: Option<String>,
    /// `name` (the default), `state`, `region` or `last_heartbeat`; `-` before for descending.
    pub sort: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// A container as the read models have it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRow {
    /// The container as the log says it is now.
    pub container: Container,
    /// The VM it is on.
    pub vm: String,
    /// When it was first seen.
    pub first_seen_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was found gone.
    pub gone_at: Option<DateTime<Utc>>,
    /// Why it is gone.
    pub gone_reason: Option<String>,
}

/// How to filter containers.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// The VM they are on.
    pub vm: Option<String>,
    /// Their state.
    pub state: Option<String>,
    /// Their health.
    pub health: Option<String>,
    /// The group of their proxy (label `efms.group`, else the group the proxy connected to).
    pub group: Option<String>,
    /// Only those not gone.
    pub live_only: bool,
    /// At most this many.
    pub limit: i64,
}

/// One change of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerChange {
    /// Its place in its VM's stream.
    pub seq: i64,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// `observed`, `gone`, or a lifecycle event (`die`, ...).
    pub change: String,
    /// The engine's time for a lifecycle event, else when it was recorded.
    pub at: DateTime<Utc>,
    /// The exit code (`die`).
    pub exit_code: Option<i64>,
    /// The signal (`kill`).
    pub signal: Option<String>,
    /// The health (`health_status`).
    pub health: Option<String>,
    /// Why (`gone`).
    pub reason: Option<String>,
}

/// One event of a VM's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VmHistoryEntry {
    /// Its place in the stream.
    pub sequence: i64,
    /// Its type.
    pub event_type: String,
    /// The event.
    pub payload: Value,
    /// Who caused it.
    pub actor: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// Utilisation over one step.
#[derive(Debug, Clone, PartialEq)]
pub struct UtilisationBucket {
    /// The step's start.
    pub at: DateTime<Utc>,
    /// Samples in it.
    pub samples: i64,
    /// Mean CPU %.
    pub cpu_percent_avg: f64,
    /// Highest CPU %.
    pub cpu_percent_max: f64,
    /// Mean 1-minute load.
    pub load_1m_avg: f64,
    /// Mean memory used.
    pub memory_used_bytes_avg: f64,
    /// Highest memory used.
    pub memory_used_bytes_max: i64,
    /// Mean bytes received per second.
    pub network_rx_bytes_per_second_avg: f64,
    /// Mean bytes sent per second.
    pub network_tx_bytes_per_second_avg: f64,
}

/// The VMs of a tenant.
pub async fn list_vms(
    pool: &PgPool,
    tenant_id: Uuid,
    filter: &VmFilter,
) -> Result<Vec<VmRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        VmRow,
        r#"SELECT v.name, v.labels AS "labels: RawJson", v.region, v.zone,
                  v.watch_images AS "watch_images: RawJson", v.state, v.state_reason,
                  v.state_since, v.facts AS "facts: RawJson", v.registered_at, v.registered_by,
                  v.removed_at, v.version,
                  p.connected AS "connected?", p.last_heartbeat_at AS "last_heartbeat_at?",
                  p.engine_reachable AS "engine_reachable?", p.engine_error AS "engine_error?",
                  p.usage AS "usage?: RawJson",
                  v.live_containers::bigint AS "containers!"
           FROM vms v
           LEFT JOIN vm_presence p ON p.tenant_id = v.tenant_id AND p.vm_name = v.name
           WHERE v.tenant_id = $1
             AND ($2::jsonb IS NULL OR v.labels @> $2)
             AND ($3::text IS NULL OR v.region = $3)
             AND ($4::text IS NULL OR v.zone = $4)
             AND ($5::text IS NULL OR v.state = $5)
             AND ($8::text IS NULL OR v.name = $8)
           ORDER BY
             CASE WHEN $6 = 'state' THEN v.state WHEN $6 = 'region' THEN v.region END ASC NULLS LAST,
             CASE WHEN $6 = '-state' THEN v.state WHEN $6 = '-region' THEN v.region END DESC NULLS LAST,
             CASE WHEN $6 = 'last_heartbeat' THEN p.last_heartbeat_at END ASC NULLS LAST,
             CASE WHEN $6 = '-last_heartbeat' THEN p.last_heartbeat_at END DESC NULLS LAST,
             CASE WHEN $6 = '-name' THEN v.name END DESC,
             v.name ASC
           LIMIT $7"#,
        tenant_id,
        filter.labels,
        filter.region,
        filter.zone,
        filter.state,
        filter.sort.as_deref().unwrap_or("name"),
        filter.limit,
        filter.name,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One VM.
pub async fn get_vm(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
) -> Result<Option<VmRow>, sqlx::Error> {
    let filter = VmFilter {
        name: Some(name.to_owned()),
        limit: 1,
        ..VmFilter::default()
    };
    Ok(list_vms(pool, tenant_id, &filter).await?.pop())
}

/// The events of a VM's stream, oldest first, recorded at or before `until` when given.
pub async fn vm_history(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<VmHistoryEntry>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        VmHistoryEntry,
        r#"SELECT sequence, event_type, payload, actor, recorded_at
           FROM events
           WHERE tenant_id = $1 AND aggregate_type = 'vm' AND aggregate_id = $2
             AND ($3::timestamptz IS NULL OR recorded_at <= $3)
           ORDER BY sequence"#,
        tenant_id,
        name,
        until,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The VM as its stream says it was at `at`, and the sequence it stood at then (`None`: it was
/// not registered yet).
pub async fn vm_at(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
    at: DateTime<Utc>,
) -> Result<Option<(efms_domain::fleet::Vm, i64)>, sqlx::Error> {
    use cqrs_es::Aggregate as _;
    let mut vm = efms_domain::fleet::Vm::default();
    let mut version = 0;
    for entry in vm_history(pool, tenant_id, name, Some(at)).await? {
        let event: efms_domain::fleet::VmEvent = serde_json::from_value(entry.payload)
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        vm.apply(event);
        version = entry.sequence;
    }
    Ok((version > 0).then_some((vm, version)))
}

/// A container's row as stored.
struct ContainerRecord {
    document: Value,
    vm_name: String,
    first_seen_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    gone_at: Option<DateTime<Utc>>,
    gone_reason: Option<String>,
}

impl TryFrom<ContainerRecord> for ContainerRow {
    type Error = sqlx::Error;

    fn try_from(record: ContainerRecord) -> Result<Self, sqlx::Error> {
        Ok(ContainerRow {
            container: serde_json::from_value(record.document)
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
            vm: record.vm_name,
            first_seen_at: record.first_seen_at,
            updated_at: record.updated_at,
            gone_at: record.gone_at,
            gone_reason: record.gone_reason,
        })
    }
}

/// The containers of a tenant, by VM then name.
pub async fn list_containers(
    pool: &PgPool,
    tenant_id: Uuid,
    filter: &ContainerFilter,
) -> Result<Vec<ContainerRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        ContainerRecord,
        r#"SELECT c.document, c.vm_name, c.first_seen_at, c.updated_at, c.gone_at, c.gone_reason
           FROM containers c
           LEFT JOIN proxies p ON p.tenant_id = c.tenant_id AND p.node_id = c.node_id
           WHERE c.tenant_id = $1
             AND ($2::text IS NULL OR c.vm_name = $2)
             AND ($3::text IS NULL OR c.state = $3)
             AND ($4::text IS NULL OR c.health = $4)
             AND ($5::text IS NULL OR coalesce(c.labels ->> 'efms.group', p.group_name) = $5)
             AND (NOT $7 OR c.gone_at IS NULL)
           ORDER BY c.vm_name, c.name, c.container_id
           LIMIT $6"#,
        tenant_id,
        filter.vm,
        filter.state,
        filter.health,
        filter.group,
        filter.limit,
        filter.live_only,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.into_iter().map(ContainerRow::try_from).collect()
}

/// The containers whose id starts with `prefix` (at most two: one means a match).
pub async fn find_containers(
    pool: &PgPool,
    tenant_id: Uuid,
    prefix: &str,
) -> Result<Vec<ContainerRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        ContainerRecord,
        r#"SELECT document, vm_name, first_seen_at, updated_at, gone_at, gone_reason
           FROM containers
           WHERE tenant_id = $1 AND container_id >= $2 AND container_id < $2 || 'g'
           ORDER BY container_id LIMIT 2"#,
        tenant_id,
        prefix,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.into_iter().map(ContainerRow::try_from).collect()
}

/// The container that is the proxy `node_id`: a live one first, else the last one seen.
pub async fn container_of_proxy(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
) -> Result<Option<ContainerRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query_as!(
        ContainerRecord,
        r#"SELECT document, vm_name, first_seen_at, updated_at, gone_at, gone_reason
           FROM containers WHERE tenant_id = $1 AND node_id = $2
           ORDER BY gone_at IS NULL DESC, updated_at DESC LIMIT 1"#,
        tenant_id,
        node_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    row.map(ContainerRow::try_from).transpose()
}

/// The changes of a container on the VM `vm`, oldest first.
pub async fn container_changes(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    container_id: &str,
) -> Result<Vec<ContainerChange>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        ContainerChange,
        r#"SELECT seq, recorded_at, change, at, exit_code, signal, health, reason
           FROM container_history WHERE tenant_id = $1 AND vm_name = $2 AND container_id = $3
           ORDER BY seq"#,
        tenant_id,
        vm,
        container_id,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The container as it was at `at` (`None`: not known yet then).
pub async fn container_at(
    pool: &PgPool,
    tenant_id: Uuid,
    container_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<Container>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let document = sqlx::query_scalar!(
        r#"SELECT container FROM container_history
           WHERE tenant_id = $1 AND container_id = $2 AND recorded_at <= $3
           ORDER BY recorded_at DESC, seq DESC LIMIT 1"#,
        tenant_id,
        container_id,
        at,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    document
        .map(|document| {
            serde_json::from_value(document).map_err(|error| sqlx::Error::Decode(Box::new(error)))
        })
        .transpose()
}

/// A VM's utilisation from `from` to `to` in steps of `step_seconds`. With a step of whole
/// minutes, the steps start and end on whole minutes and the one-minute rollups answer for the time
/// they cover (so far beyond the raw samples' retention), the raw samples for the rest; a shorter
/// step reads the raw samples alone.
pub async fn utilisation(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step_seconds: i64,
) -> Result<Vec<UtilisationBucket>, sqlx::Error> {
    let whole_minutes = step_seconds % 60 == 0;
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        UtilisationBucket,
        r#"WITH bounds AS (
               SELECT CASE WHEN $6 THEN date_trunc('minute', $3::timestamptz) ELSE $3 END AS origin,
                      CASE WHEN $6 THEN date_trunc('minute', $4::timestamptz) ELSE $4 END AS until,
                      CASE WHEN $6 THEN coalesce((SELECT rolled_up_to FROM sample_rollups
                                                  WHERE name = 'vm'), '-infinity')
                           ELSE '-infinity'::timestamptz END AS rolled_up_to),
           parts AS (
               SELECT r.minute AS at, r.samples::bigint AS samples, r.cpu_percent_sum AS cpu_sum,
                      r.cpu_percent_max AS cpu_max, r.load_1m_sum AS load_sum,
                      r.memory_used_bytes_sum AS memory_sum, r.memory_used_bytes_max AS memory_max,
                      r.network_rx_bytes_per_second_sum AS rx_sum,
                      r.network_tx_bytes_per_second_sum AS tx_sum
               FROM vm_samples_1m r, bounds b
               WHERE r.tenant_id = $1 AND r.vm_name = $2 AND r.minute >= b.origin
                 AND r.minute < least(b.until, b.rolled_up_to)
               UNION ALL
               SELECT s.sampled_at, 1, s.cpu_percent, s.cpu_percent, s.load_1m,
                      s.memory_used_bytes, s.memory_used_bytes, s.network_rx_bytes_per_second,
                      s.network_tx_bytes_per_second
               FROM vm_samples s, bounds b
               WHERE s.tenant_id = $1 AND s.vm_name = $2
                 AND s.sampled_at >= greatest(b.origin, b.rolled_up_to) AND s.sampled_at < b.until)
           SELECT date_bin(make_interval(secs => $5::bigint), p.at, b.origin) AS "at!",
                  sum(p.samples)::bigint AS "samples!",
                  (sum(p.cpu_sum) / sum(p.samples))::float8 AS "cpu_percent_avg!",
                  max(p.cpu_max)::float8 AS "cpu_percent_max!",
                  (sum(p.load_sum) / sum(p.samples))::float8 AS "load_1m_avg!",
                  (sum(p.memory_sum) / sum(p.samples))::float8 AS "memory_used_bytes_avg!",
                  max(p.memory_max) AS "memory_used_bytes_max!",
                  (sum(p.rx_sum) / sum(p.samples))::float8 AS "network_rx_bytes_per_second_avg!",
                  (sum(p.tx_sum) / sum(p.samples))::float8 AS "network_tx_bytes_per_second_avg!"
           FROM parts p, bounds b
           GROUP BY 1 ORDER BY 1"#,
        tenant_id,
        name,
        from,
        to,
        step_seconds,
        whole_minutes,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Of the containers `ids`, those the tenant knows on a VM other than `vm` and not gone: as
/// `(container id, VM)`.
pub async fn containers_elsewhere(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    ids: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(CONTAINERS_ELSEWHERE)
        .bind(tenant_id)
        .bind(vm)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The statement of [`containers_elsewhere`]: one primary-key lookup per id asked about, whatever
/// the table's statistics. Each id is looked up on its own (a `LIMIT` keeps the planner from
/// turning the lookups into a join): asked as one join or `= ANY`, a planner that never saw the
/// table analyzed reads all of the tenant's containers through the index by VM instead, on
/// every report of every agent.
pub const CONTAINERS_ELSEWHERE: &str = r"SELECT c.container_id, c.vm_name
   FROM UNNEST($3::text[]) AS wanted(id),
        LATERAL (SELECT container_id, vm_name, gone_at FROM containers
                 WHERE tenant_id = $1 AND container_id = wanted.id LIMIT 1) AS c
   WHERE c.vm_name <> $2 AND c.gone_at IS NULL";

/// How many VMs are in each state, and containers in each state and health, across tenants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// `(state, VMs)`.
    pub vms: Vec<(String, i64)>,
    /// `(state, health, containers)`, gone ones left out.
    pub containers: Vec<(String, String, i64)>,
}

/// The fleet's counts, for the metrics.
pub async fn fleet_counts(pool: &PgPool) -> Result<FleetCounts, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let vms = sqlx::query!(r#"SELECT state, count(*) AS "count!" FROM vms GROUP BY state"#)
        .fetch_all(&mut *tx)
        .await?;
    let containers = sqlx::query!(
        r#"SELECT state, health, count(*) AS "count!" FROM containers
           WHERE gone_at IS NULL GROUP BY state, health"#
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(FleetCounts {
        vms: vms.into_iter().map(|row| (row.state, row.count)).collect(),
        containers: containers
            .into_iter()
            .map(|row| (row.state, row.health, row.count))
            .collect(),
    })
}
