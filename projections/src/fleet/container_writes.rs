//! The containers' read model written a batch at a time: what a run of container events did,
//! gathered in memory in the log's order, then one statement per table (each container's last
//! state, every change's history row, each VM's version and count of live containers).
//!
//! Agents' lifecycle events come by the hundred a second and are committed together; writing
//! each on its own cost four statements an event. The rows written are those the events would
//! write one by one.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use efms_commands::RecordedEvent;
use efms_domain::fleet::{Container, ContainerState, Health, LifecycleEvent, VmEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projector::ProjectionError;

/// A container as the read model has it: on which VM, and when it went (if it did).
#[derive(Debug, Clone)]
struct Known {
    container: Container,
    vm: String,
    gone_at: Option<DateTime<Utc>>,
}

impl Known {
    /// The VM it counts as a live container of, unless it is gone.
    fn live_on(&self) -> Option<&str> {
        self.gone_at.is_none().then_some(self.vm.as_str())
    }
}

/// A container's row to write: its VM, its last state, and when the batch first and last
/// touched it.
#[derive(Debug)]
struct Row {
    vm: String,
    known: Known,
    gone_reason: Option<String>,
    first_seen_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// One change of a container, for its history row.
#[derive(Debug)]
struct HistoryRow {
    tenant_id: Uuid,
    container_id: String,
    vm: String,
    seq: i64,
    recorded_at: DateTime<Utc>,
    change: String,
    at: DateTime<Utc>,
    exit_code: Option<i64>,
    signal: Option<String>,
    health: Option<String>,
    reason: Option<String>,
    container: String,
}

/// What a run of container events wrote, not yet in the database.
#[derive(Debug, Default)]
pub(super) struct ContainerWrites {
    known: HashMap<(Uuid, String), Known>,
    rows: BTreeMap<(Uuid, String), Row>,
    history: Vec<HistoryRow>,
    versions: BTreeMap<(Uuid, String), (i64, DateTime<Utc>)>,
    /// Per VM, how its count of live containers changed.
    live: BTreeMap<(Uuid, String), i32>,
}

/// Sets the version and last change of each VM (`$1` tenants, `$2` names, `$3` versions, `$4`
/// times, pairwise). Each VM is looked up by its key on its own (the `LATERAL` subquery with its
/// `LIMIT` cannot be flattened into a join) and its row updated by its physical address, so the
/// plan costs what the batch touched whatever the fleet's size and statistics (a join let a
/// planner without statistics read every VM). Only the fleet projector writes `vms`, under its
/// checkpoint's lock, so no concurrent update moves a row between the lookup and the update.
/// Held as text so that `tests/fleet_plans.rs` plans this very statement.
pub const BUMP_VERSIONS: &str = r"UPDATE vms v SET version = u.version, updated_at = u.at
FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[]) AS u(tenant_id, vm, version, at)
CROSS JOIN LATERAL (
    SELECT o.ctid AS row_id FROM vms o WHERE o.tenant_id = u.tenant_id AND o.name = u.vm LIMIT 1
) AS o
WHERE v.ctid = o.row_id";

/// Moves each VM's count of live containers (`$1` tenants, `$2` names, `$3` changes, pairwise),
/// looked up as in [`BUMP_VERSIONS`].
pub const COUNT_LIVE: &str = r"UPDATE vms v SET live_containers = v.live_containers + u.change
FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(tenant_id, vm, change)
CROSS JOIN LATERAL (
    SELECT o.ctid AS row_id FROM vms o WHERE o.tenant_id = u.tenant_id AND o.name = u.vm LIMIT 1
) AS o
WHERE v.ctid = o.row_id";

/// The container a container event is about, if it is one.
fn container_of(payload: &VmEvent) -> Option<&str> {
    match payload {
        VmEvent::ContainerObserved { container } => Some(&container.id),
        VmEvent::ContainerLifecycle { event } => Some(&event.container_id),
        VmEvent::ContainerGone { container_id, .. } => Some(container_id),
        _ => None,
    }
}

impl ContainerWrites {
    /// Reads, in one statement, the containers that `events` are about as the read model has
    /// them now.
    pub(super) async fn load(
        tx: &mut PgConnection,
        events: &[(&RecordedEvent, VmEvent)],
    ) -> Result<Self, ProjectionError> {
        let (mut tenants, mut ids) = (Vec::new(), Vec::new());
        for (event, payload) in events {
            if let Some(id) = container_of(payload) {
                tenants.push(event.tenant_id);
                ids.push(id.to_owned());
            }
        }
        let mut writes = Self::default();
        if ids.is_empty() {
            return Ok(writes);
        }
        let found = sqlx::query!(
            r#"SELECT c.tenant_id AS "tenant_id!", c.container_id AS "container_id!",
                      c.document AS "document!", c.vm_name AS "vm_name!", c.gone_at
               FROM UNNEST($1::uuid[], $2::text[]) AS wanted(tenant_id, id),
                    LATERAL (SELECT tenant_id, container_id, document, vm_name, gone_at
                             FROM containers
                             WHERE tenant_id = wanted.tenant_id AND container_id = wanted.id
                             LIMIT 1) AS c"#,
            &tenants,
            &ids,
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in found {
            let known = Known {
                container: serde_json::from_value(row.document)?,
                vm: row.vm_name,
                gone_at: row.gone_at,
            };
            writes
                .known
                .insert((row.tenant_id, row.container_id), known);
        }
        Ok(writes)
    }

    /// Takes `payload` when it is a container event (`true`), as writing it one by one would:
    /// the VM's version, the container's new state and its history row.
    pub(super) fn take(
        &mut self,
        event: &RecordedEvent,
        payload: &VmEvent,
    ) -> Result<bool, ProjectionError> {
        let Some(id) = container_of(payload) else {
            return Ok(false);
        };
        let vm_key = (event.tenant_id, event.aggregate_id.clone());
        self.versions
            .insert(vm_key, (event.sequence, event.recorded_at));
        let key = (event.tenant_id, id.to_owned());
        let before = self.known.get(&key);
        let (after, change) = match payload {
            VmEvent::ContainerObserved { container } => (container.clone(), Change::observed()),
            VmEvent::ContainerLifecycle { event: lifecycle } => (
                lifecycle.applied_to(before.map(|known| &known.container)),
                Change::lifecycle(lifecycle),
            ),
            VmEvent::ContainerGone { reason, .. } => {
                let Some(before) = before else {
                    return Ok(true);
                };
                let mut container = before.container.clone();
                container.state = ContainerState::Gone;
                (container, Change::gone(reason))
            }
            _ => return Ok(false),
        };
        let gone = after.state == ContainerState::Gone;
        let gone_at = if gone {
            before
                .and_then(|known| known.gone_at)
                .or(Some(event.recorded_at))
        } else {
            None
        };
        self.history.push(HistoryRow {
            tenant_id: event.tenant_id,
            container_id: id.to_owned(),
            vm: event.aggregate_id.clone(),
            seq: event.sequence,
            recorded_at: event.recorded_at,
            change: change.kind,
            at: change.at.unwrap_or(event.recorded_at),
            exit_code: change.exit_code,
            signal: change.signal,
            health: change.health,
            reason: change.reason.clone(),
            container: serde_json::to_string(&after)?,
        });
        let known = Known {
            container: after,
            vm: event.aggregate_id.clone(),
            gone_at,
        };
        let was_live_on = before.and_then(Known::live_on).map(str::to_owned);
        if was_live_on.as_deref() != known.live_on() {
            if let Some(vm) = was_live_on {
                *self.live.entry((event.tenant_id, vm)).or_default() -= 1;
            }
            if let Some(vm) = known.live_on() {
                *self
                    .live
                    .entry((event.tenant_id, vm.to_owned()))
                    .or_default() += 1;
            }
        }
        self.known.insert(key.clone(), known.clone());
        let first_seen_at = self
            .rows
            .get(&key)
            .map_or(event.recorded_at, |row| row.first_seen_at);
        let row = Row {
            vm: event.aggregate_id.clone(),
            known,
            gone_reason: change.reason.filter(|_| gone),
            first_seen_at,
            updated_at: event.recorded_at,
        };
        self.rows.insert(key, row);
        Ok(true)
    }

    /// Writes what was taken since the last flush.
    pub(super) async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        self.bump_versions(tx).await?;
        self.count_live(tx).await?;
        self.write_rows(tx).await?;
        self.write_history(tx).await?;
        Ok(())
    }

    async fn bump_versions(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        if self.versions.is_empty() {
            return Ok(());
        }
        let (mut tenants, mut vms, mut versions, mut at) = (vec![], vec![], vec![], vec![]);
        for ((tenant_id, vm), (version, updated_at)) in std::mem::take(&mut self.versions) {
            tenants.push(tenant_id);
            vms.push(vm);
            versions.push(version);
            at.push(updated_at);
        }
        sqlx::query(BUMP_VERSIONS)
            .bind(&tenants)
            .bind(&vms)
            .bind(&versions)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn count_live(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        let (mut tenants, mut vms, mut changes) = (vec![], vec![], vec![]);
        for ((tenant_id, vm), change) in std::mem::take(&mut self.live) {
            if change != 0 {
                tenants.push(tenant_id);
                vms.push(vm);
                changes.push(change);
            }
        }
        if tenants.is_empty() {
            return Ok(());
        }
        sqlx::query(COUNT_LIVE)
            .bind(&tenants)
            .bind(&vms)
            .bind(&changes)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn write_rows(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut columns = RowColumns::default();
        for ((tenant_id, _), row) in std::mem::take(&mut self.rows) {
            columns.push(tenant_id, row)?;
        }
        columns.upsert(tx).await
    }

    async fn write_history(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        if self.history.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.history);
        sqlx::query!(
            r#"INSERT INTO container_history (tenant_id, container_id, vm_name, seq, recorded_at,
                   change, at, exit_code, signal, health, reason, container)
               SELECT u.tenant_id, u.id, u.vm, u.seq, u.recorded_at, u.change, u.at, u.exit_code,
                      u.signal, u.health, u.reason, u.container::jsonb
               FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                           $6::text[], $7::timestamptz[], $8::bigint[], $9::text[], $10::text[],
                           $11::text[], $12::text[])
                    AS u(tenant_id, id, vm, seq, recorded_at, change, at, exit_code, signal,
                         health, reason, container)"#,
            &rows.iter().map(|r| r.tenant_id).collect::<Vec<_>>(),
            &rows
                .iter()
                .map(|r| r.container_id.clone())
                .collect::<Vec<_>>(),
            &rows.iter().map(|r| r.vm.clone()).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.change.clone()).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.at).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.exit_code).collect::<Vec<_>>() as &[Option<i64>],
            &rows.iter().map(|r| r.signal.clone()).collect::<Vec<_>>() as &[Option<String>],
            &rows.iter().map(|r| r.health.clone()).collect::<Vec<_>>() as &[Option<String>],
            &rows.iter().map(|r| r.reason.clone()).collect::<Vec<_>>() as &[Option<String>],
            &rows.iter().map(|r| r.container.clone()).collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// What one change did to a container, for its history row.
struct Change {
    kind: String,
    at: Option<DateTime<Utc>>,
    exit_code: Option<i64>,
    signal: Option<String>,
    health: Option<String>,
    reason: Option<String>,
}

impl Change {
    fn observed() -> Self {
        Self::plain("observed", None)
    }

    fn gone(reason: &str) -> Self {
        Self::plain("gone", Some(reason.to_owned()))
    }

    fn plain(kind: &str, reason: Option<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            at: None,
            exit_code: None,
            signal: None,
            health: None,
            reason,
        }
    }

    fn lifecycle(event: &LifecycleEvent) -> Self {
        Self {
            kind: event.kind.as_str().to_owned(),
            at: Some(event.at()),
            exit_code: event.exit_code,
            signal: event.signal.clone(),
            health: event.health.map(|health| Health::as_str(health).to_owned()),
            reason: None,
        }
    }
}

/// Container rows as columns, for one upsert.
#[derive(Default)]
struct RowColumns {
    tenants: Vec<Uuid>,
    ids: Vec<String>,
    vms: Vec<String>,
    names: Vec<String>,
    images: Vec<String>,
    image_ids: Vec<String>,
    node_ids: Vec<Option<String>>,
    states: Vec<String>,
    healths: Vec<String>,
    restart_counts: Vec<i64>,
    exit_codes: Vec<Option<i64>>,
    oom_killed: Vec<bool>,
    created_at: Vec<Option<DateTime<Utc>>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    limits: Vec<String>,
    ports: Vec<String>,
    labels: Vec<String>,
    first_seen_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    gone_at: Vec<Option<DateTime<Utc>>>,
    gone_reasons: Vec<Option<String>>,
    documents: Vec<String>,
}

impl RowColumns {
    fn push(&mut self, tenant_id: Uuid, row: Row) -> Result<(), ProjectionError> {
        let container = &row.known.container;
        self.tenants.push(tenant_id);
        self.ids.push(container.id.clone());
        self.vms.push(row.vm);
        self.names.push(container.name.clone());
        self.images.push(container.image.clone());
        self.image_ids.push(container.image_id.clone());
        self.node_ids.push(container.node_id.clone());
        self.states.push(container.state.as_str().to_owned());
        self.healths.push(container.health.as_str().to_owned());
        self.restart_counts
            .push(i64::try_from(container.restart_count).unwrap_or(i64::MAX));
        self.exit_codes.push(container.exit_code);
        self.oom_killed.push(container.oom_killed);
        self.created_at.push(container.created_at);
        self.started_at.push(container.started_at);
        self.finished_at.push(container.finished_at);
        self.limits.push(serde_json::to_string(&container.limits)?);
        self.ports.push(serde_json::to_string(&container.ports)?);
        self.labels.push(serde_json::to_string(&container.labels)?);
        self.first_seen_at.push(row.first_seen_at);
        self.updated_at.push(row.updated_at);
        self.gone_at.push(row.known.gone_at);
        self.gone_reasons.push(row.gone_reason);
        self.documents.push(serde_json::to_string(container)?);
        Ok(())
    }

    async fn upsert(self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query!(
            r#"INSERT INTO containers (tenant_id, container_id, vm_name, name, image, image_id,
                   node_id, state, health, restart_count, exit_code, oom_killed, created_at,
                   started_at, finished_at, limits, ports, labels, first_seen_at, updated_at,
                   gone_at, gone_reason, document)
               SELECT u.tenant_id, u.id, u.vm, u.name, u.image, u.image_id, u.node_id, u.state,
                      u.health, u.restart_count, u.exit_code, u.oom_killed, u.created_at,
                      u.started_at, u.finished_at, u.limits::jsonb, u.ports::jsonb,
                      u.labels::jsonb, u.first_seen_at, u.updated_at, u.gone_at, u.gone_reason,
                      u.document::jsonb
               FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                           $11::bigint[], $12::boolean[], $13::timestamptz[], $14::timestamptz[],
                           $15::timestamptz[], $16::text[], $17::text[], $18::text[],
                           $19::timestamptz[], $20::timestamptz[], $21::timestamptz[],
                           $22::text[], $23::text[])
                    AS u(tenant_id, id, vm, name, image, image_id, node_id, state, health,
                         restart_count, exit_code, oom_killed, created_at, started_at,
                         finished_at, limits, ports, labels, first_seen_at, updated_at, gone_at,
                         gone_reason, document)
               ON CONFLICT (tenant_id, container_id) DO UPDATE SET
                   vm_name = excluded.vm_name, name = excluded.name, image = excluded.image,
                   image_id = excluded.image_id, node_id = excluded.node_id,
                   state = excluded.state, health = excluded.health,
                   restart_count = excluded.restart_count, exit_code = excluded.exit_code,
                   oom_killed = excluded.oom_killed, created_at = excluded.created_at,
                   started_at = excluded.started_at, finished_at = excluded.finished_at,
                   limits = excluded.limits, ports = excluded.ports, labels = excluded.labels,
                   updated_at = excluded.updated_at, gone_at = excluded.gone_at,
                   gone_reason = excluded.gone_reason, document = excluded.document"#,
            &self.tenants,
            &self.ids,
            &self.vms,
            &self.names,
            &self.images,
            &self.image_ids,
            &self.node_ids as &[Option<String>],
            &self.states,
            &self.healths,
            &self.restart_counts,
            &self.exit_codes as &[Option<i64>],
            &self.oom_killed,
            &self.created_at as &[Option<DateTime<Utc>>],
            &self.started_at as &[Option<DateTime<Utc>>],
            &self.finished_at as &[Option<DateTime<Utc>>],
            &self.limits,
            &self.ports,
            &self.labels,
            &self.first_seen_at,
            &self.updated_at,
            &self.gone_at as &[Option<DateTime<Utc>>],
            &self.gone_reasons as &[Option<String>],
            &self.documents,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
