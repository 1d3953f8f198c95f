//! What the agents' streams store beside the log, gathered from every stream into shared
//! transactions: heartbeats (presence and the host's sample), container usage rounds, and where
//! each agent process's reports stand.
//!
//! None of it is history and all of it may be repeated, so one task per replica takes whatever is
//! waiting, lets more gather for [`GATHER_FOR`](super::GATHER_FOR), and writes it with one
//! statement per table in one transaction that does not wait for the WAL flush. A thousand
//! agents then cost a few dozen transactions a second instead of one per report. Heartbeats and usage rounds wait for their
//! transaction (their report is acknowledged after it); where reports stand is written with the
//! next transaction without waiting, since what it marks is already stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use efms_domain::fleet::reports::{ContainerUsage, HostUsage};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::gather;
use crate::Scope;

/// The most reports written in one transaction.
const MOST_PER_TRANSACTION: usize = 2_048;

/// Reports waiting for the writer, at most (a stream waits for room beyond).
const WAITING: usize = 8_192;

/// Why presence could not be stored: the database failed (shared by every report of the
/// transaction).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PresenceError(Arc<sqlx::Error>);

impl From<sqlx::Error> for PresenceError {
    fn from(error: sqlx::Error) -> Self {
        Self(Arc::new(error))
    }
}

/// Reports of an agent process (`epoch`) stored up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The agent process.
    pub epoch: String,
    /// The last seq stored.
    pub seq: i64,
}

/// A heartbeat: the engine's error (`None`: it answers), the host's utilisation when the
/// heartbeat carries it, and the report it came in (`None`: `Hello` standing for one).
#[derive(Debug, Clone)]
pub struct Beat {
    /// Why the engine does not answer, if it does not.
    pub engine_error: Option<String>,
    /// The host's utilisation.
    pub usage: Option<HostUsage>,
    /// The report, stored with the heartbeat.
    pub report: Option<Stored>,
}

/// One report for the writer.
#[derive(Debug)]
enum Report {
    Heartbeat(Beat),
    ContainerUsage(Vec<ContainerUsage>, Stored),
    Stored(Stored, Option<i64>),
}

#[derive(Debug)]
struct Waiting {
    tenant_id: Uuid,
    vm: String,
    report: Report,
    answer: Option<oneshot::Sender<Result<(), PresenceError>>>,
}

/// The way into the replica's writer of presence and samples.
#[derive(Debug, Clone)]
pub struct PresenceWriter {
    sender: mpsc::Sender<Waiting>,
}

impl PresenceWriter {
    /// Starts the writer over `pool`.
    pub fn spawn(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(WAITING);
        tokio::spawn(write_loop(pool, receiver));
        Self { sender }
    }

    async fn send(
        &self,
        tenant_id: Uuid,
        vm: &str,
        report: Report,
        wait: bool,
    ) -> Result<(), PresenceError> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            tenant_id,
            vm: vm.to_owned(),
            report,
            answer: wait.then_some(answer),
        };
        let stopped = || PresenceError::from(sqlx::Error::PoolClosed);
        self.sender.send(waiting).await.map_err(|_| stopped())?;
        if !wait {
            return Ok(());
        }
        answered.await.map_err(|_| stopped())?
    }

    /// Records a heartbeat (presence now, the host's sample, its report); answers once written.
    /// A sample that cannot be stored (its day's partition missing) is logged and lost, never
    /// the heartbeat nor the utilisation it tells.
    pub async fn heartbeat(
        &self,
        tenant_id: Uuid,
        vm: &str,
        beat: Beat,
    ) -> Result<(), PresenceError> {
        self.send(tenant_id, vm, Report::Heartbeat(beat), true)
            .await
    }

    /// Stores one round of container usage samples with the report they came in; answers once
    /// written. Samples that cannot be stored are logged and lost; the report is recorded as
    /// stored all the same.
    pub async fn container_usage(
        &self,
        tenant_id: Uuid,
        vm: &str,
        usages: Vec<ContainerUsage>,
        report: Stored,
    ) -> Result<(), PresenceError> {
        let report = Report::ContainerUsage(usages, report);
        self.send(tenant_id, vm, report, true).await
    }

    /// Records, with the next transaction and without waiting for it, that the reports of
    /// `stored.epoch` up to `stored.seq` are stored, with the engine time of the last lifecycle
    /// event among them. What it marks is stored already: a mark lost to a crash only makes the
    /// agent send those reports again, and they are stored once.
    pub async fn stored(
        &self,
        tenant_id: Uuid,
        vm: &str,
        stored: Stored,
        last_event_nanos: Option<i64>,
    ) -> Result<(), PresenceError> {
        let report = Report::Stored(stored, last_event_nanos);
        self.send(tenant_id, vm, report, false).await
    }
}

async fn write_loop(pool: PgPool, mut receiver: mpsc::Receiver<Waiting>) {
    let mut taken = Vec::with_capacity(MOST_PER_TRANSACTION);
    while gather(&mut receiver, &mut taken, MOST_PER_TRANSACTION).await {
        let waiting = std::mem::take(&mut taken);
        // Written in a task of its own: one that fails unexpectedly (a panic) fails its reports,
        // not the writer.
        let (pool, written) = (pool.clone(), waiting);
        let (outcome, waiting) = match tokio::spawn(async move {
            let outcome = write(&pool, &written).await.map_err(PresenceError::from);
            (outcome, written)
        })
        .await
        {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "a write of agents' presence failed");
                continue;
            }
        };
        if let Err(error) = &outcome {
            tracing::warn!(%error, reports = waiting.len(), "agents' presence could not be stored");
        }
        for answer in waiting.into_iter().filter_map(|waiting| waiting.answer) {
            // A stream that stopped waiting has nothing to be told.
            let _ = answer.send(outcome.clone());
        }
    }
}

/// Writes one transaction's reports: presence, then samples (each in a savepoint: lost, not
/// fatal, when they cannot be stored), then where reports stand.
async fn write(pool: &PgPool, waiting: &[Waiting]) -> Result<(), sqlx::Error> {
    use sqlx::Acquire as _;
    let mut tx = Scope::System.begin_unflushed(pool).await?;
    upsert_presence(&mut tx, waiting).await?;
    let mut samples = tx.begin().await?;
    match insert_vm_samples(&mut samples, waiting).await {
        Ok(()) => samples.commit().await?,
        Err(error) => {
            tracing::warn!(%error, "utilisation samples could not be stored");
            samples.rollback().await?;
        }
    }
    let mut samples = tx.begin().await?;
    match insert_container_samples(&mut samples, waiting).await {
        Ok(()) => samples.commit().await?,
        Err(error) => {
            tracing::warn!(%error, "container samples could not be stored");
            samples.rollback().await?;
        }
    }
    mark_stored(&mut tx, waiting).await?;
    tx.commit().await
}

/// Each VM's presence as its last heartbeat of the transaction tells it.
async fn upsert_presence(conn: &mut PgConnection, waiting: &[Waiting]) -> Result<(), sqlx::Error> {
    let mut last: BTreeMap<(Uuid, &str), &Beat> = BTreeMap::new();
    for waiting in waiting {
        if let Report::Heartbeat(beat) = &waiting.report {
            last.insert((waiting.tenant_id, waiting.vm.as_str()), beat);
        }
    }
    if last.is_empty() {
        return Ok(());
    }
    let (mut tenants, mut vms, mut errors, mut usages) = (vec![], vec![], vec![], vec![]);
    for ((tenant_id, vm), beat) in last {
        tenants.push(tenant_id);
        vms.push(vm.to_owned());
        errors.push(beat.engine_error.clone());
        usages.push(
            beat.usage
                .as_ref()
                .map(|usage| serde_json::to_string(usage).unwrap_or_default()),
        );
    }
    sqlx::query!(
        r#"INSERT INTO vm_presence (tenant_id, vm_name, last_heartbeat_at, engine_reachable,
                                   engine_error, usage)
           SELECT u.tenant_id, u.vm, now(), u.error IS NULL, u.error, u.usage::jsonb
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
                AS u(tenant_id, vm, error, usage)
           ON CONFLICT (tenant_id, vm_name) DO UPDATE SET
               last_heartbeat_at = now(), engine_reachable = excluded.engine_reachable,
               engine_error = excluded.engine_error,
               usage = coalesce(excluded.usage, vm_presence.usage)"#,
        &tenants,
        &vms,
        &errors as &[Option<String>],
        &usages as &[Option<String>],
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The hosts' utilisation samples of the transaction's heartbeats.
async fn insert_vm_samples(
    conn: &mut PgConnection,
    waiting: &[Waiting],
) -> Result<(), sqlx::Error> {
    let mut columns = VmSampleColumns::default();
    for waiting in waiting {
        if let Report::Heartbeat(Beat {
            usage: Some(usage), ..
        }) = &waiting.report
        {
            columns.push(waiting.tenant_id, &waiting.vm, usage);
        }
    }
    if columns.tenants.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO vm_samples (tenant_id, vm_name, sampled_at, cpu_percent, load_1m, load_5m,
               load_15m, memory_used_bytes, memory_total_bytes, network_rx_bytes_per_second,
               network_tx_bytes_per_second, disks)
           SELECT u.tenant_id, u.vm, now(), u.cpu, u.load_1m, u.load_5m, u.load_15m, u.used,
                  u.total, u.rx, u.tx, u.disks::jsonb
           FROM UNNEST($1::uuid[], $2::text[], $3::real[], $4::real[], $5::real[], $6::real[],
                       $7::bigint[], $8::bigint[], $9::float8[], $10::float8[], $11::text[])
                AS u(tenant_id, vm, cpu, load_1m, load_5m, load_15m, used, total, rx, tx, disks)"#,
        &columns.tenants,
        &columns.vms,
        &columns.cpu,
        &columns.load[0],
        &columns.load[1],
        &columns.load[2],
        &columns.memory_used,
        &columns.memory_total,
        &columns.rx,
        &columns.tx,
        &columns.disks,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Host samples as columns, for one insert.
#[derive(Default)]
struct VmSampleColumns {
    tenants: Vec<Uuid>,
    vms: Vec<String>,
    cpu: Vec<f32>,
    load: [Vec<f32>; 3],
    memory_used: Vec<i64>,
    memory_total: Vec<i64>,
    rx: Vec<f64>,
    tx: Vec<f64>,
    disks: Vec<String>,
}

impl VmSampleColumns {
    #[allow(clippy::cast_possible_truncation)]
    fn push(&mut self, tenant_id: Uuid, vm: &str, usage: &HostUsage) {
        self.tenants.push(tenant_id);
        self.vms.push(vm.to_owned());
        self.cpu.push(usage.cpu_percent as f32);
        for (column, load) in self.load.iter_mut().zip(usage.load) {
            column.push(load as f32);
        }
        self.memory_used
            .push(i64::try_from(usage.memory_used_bytes).unwrap_or(i64::MAX));
        self.memory_total
            .push(i64::try_from(usage.memory_total_bytes).unwrap_or(i64::MAX));
        self.rx.push(usage.network_rx_bytes_per_second);
        self.tx.push(usage.network_tx_bytes_per_second);
        self.disks
            .push(serde_json::to_string(&usage.disks).unwrap_or_else(|_| "[]".to_owned()));
    }
}

/// The containers' usage samples of the transaction's rounds: one row per round, its containers
/// as parallel arrays. Each round's arrays travel as array literals, one row of the statement's
/// input per round, so the statement neither regroups nor sorts anything.
async fn insert_container_samples(
    conn: &mut PgConnection,
    waiting: &[Waiting],
) -> Result<(), sqlx::Error> {
    let mut rounds = RoundColumns::default();
    for waiting in waiting {
        if let Report::ContainerUsage(usages, _) = &waiting.report {
            if !usages.is_empty() {
                rounds.push(waiting.tenant_id, &waiting.vm, usages);
            }
        }
    }
    if rounds.tenants.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO container_samples (tenant_id, vm_name, sampled_at, container_ids,
               cpu_percent, memory_used_bytes, memory_limit_bytes, pids)
           SELECT u.tenant_id, u.vm, now(), u.ids::bytea[], u.cpu::real[], u.memory::bigint[],
                  u.memory_limit::bigint[], u.pids::bigint[]
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[])
                AS u(tenant_id, vm, ids, cpu, memory, memory_limit, pids)"#,
        &rounds.tenants,
        &rounds.vms,
        &rounds.ids,
        &rounds.cpu,
        &rounds.memory,
        &rounds.limits,
        &rounds.pids,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Usage rounds as columns of array literals, one element per round.
#[derive(Default)]
struct RoundColumns {
    tenants: Vec<Uuid>,
    vms: Vec<String>,
    ids: Vec<String>,
    cpu: Vec<String>,
    memory: Vec<String>,
    limits: Vec<String>,
    pids: Vec<String>,
}

impl RoundColumns {
    fn push(&mut self, tenant_id: Uuid, vm: &str, usages: &[ContainerUsage]) {
        self.tenants.push(tenant_id);
        self.vms.push(vm.to_owned());
        // Ids are checked as 64 hexadecimal digits; `\\x` in an array literal is bytea's `\x`.
        self.ids.push(array_literal(
            usages
                .iter()
                .map(|usage| Some(format!("\\\\x{}", usage.container_id))),
        ));
        #[allow(clippy::cast_possible_truncation)]
        self.cpu.push(array_literal(
            usages.iter().map(|usage| Some(usage.cpu_percent as f32)),
        ));
        self.memory.push(array_literal(
            usages
                .iter()
                .map(|usage| Some(bigint(usage.memory_used_bytes))),
        ));
        self.limits.push(array_literal(
            usages
                .iter()
                .map(|usage| usage.memory_limit_bytes.map(bigint)),
        ));
        self.pids.push(array_literal(
            usages.iter().map(|usage| usage.pids.map(bigint)),
        ));
    }
}

/// `value` as a `bigint` holds it (the largest one beyond).
fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A Postgres array literal of `items` (`None`: NULL). Items are numbers or escaped bytea, which
/// need no quoting.
fn array_literal<T: std::fmt::Display>(items: impl Iterator<Item = Option<T>>) -> String {
    use std::fmt::Write as _;
    let mut literal = String::from("{");
    for (n, item) in items.enumerate() {
        if n > 0 {
            literal.push(',');
        }
        match item {
            Some(item) => {
                let _ = write!(literal, "{item}");
            }
            None => literal.push_str("NULL"),
        }
    }
    literal.push('}');
    literal
}

/// Where each agent process's reports stand after the transaction: the highest seq and event
/// time marked for it.
async fn mark_stored(conn: &mut PgConnection, waiting: &[Waiting]) -> Result<(), sqlx::Error> {
    let mut marks: BTreeMap<(Uuid, &str, &str), (i64, i64)> = BTreeMap::new();
    for waiting in waiting {
        let (stored, nanos) = match &waiting.report {
            Report::Heartbeat(Beat {
                report: Some(stored),
                ..
            })
            | Report::ContainerUsage(_, stored) => (stored, None),
            Report::Stored(stored, nanos) => (stored, *nanos),
            Report::Heartbeat(_) => continue,
        };
        let key = (
            waiting.tenant_id,
            waiting.vm.as_str(),
            stored.epoch.as_str(),
        );
        let mark = marks.entry(key).or_insert((0, 0));
        mark.0 = mark.0.max(stored.seq);
        mark.1 = mark.1.max(nanos.unwrap_or(0));
    }
    if marks.is_empty() {
        return Ok(());
    }
    let (mut tenants, mut vms, mut epochs, mut seqs, mut nanos) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((tenant_id, vm, epoch), (seq, last_event)) in marks {
        tenants.push(tenant_id);
        vms.push(vm.to_owned());
        epochs.push(epoch.to_owned());
        seqs.push(seq);
        nanos.push(last_event);
    }
    sqlx::query!(
        r#"UPDATE vm_presence p SET acked_seq = greatest(p.acked_seq, u.seq),
                                    last_event_nanos = greatest(p.last_event_nanos, u.nanos)
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                AS u(tenant_id, vm, epoch, seq, nanos)
           WHERE p.tenant_id = u.tenant_id AND p.vm_name = u.vm AND p.epoch = u.epoch"#,
        &tenants,
        &vms,
        &epochs,
        &seqs,
        &nanos,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::array_literal;

    #[test]
    fn array_literals_hold_numbers_nulls_and_escaped_bytea() {
        assert_eq!(
            array_literal([Some(1.5_f32), Some(0.0)].into_iter()),
            "{1.5,0}"
        );
        assert_eq!(array_literal([Some(7_i64), None].into_iter()), "{7,NULL}");
        assert_eq!(array_literal([Some("\\\\xab")].into_iter()), "{\\\\xab}");
        assert_eq!(array_literal(std::iter::empty::<Option<i64>>()), "{}");
    }
}
