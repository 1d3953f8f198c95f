//! What the agents' streams store beside the log: presence (`vm_presence`: connected, last
//! heartbeat, engine, utilisation now, where each agent process's reports stand) and utilisation
//! samples (`vm_samples`, `container_samples`, partitioned by day).

use std::time::Duration;

use chrono::{DateTime, Utc};
use efms_domain::fleet::reports::{ContainerUsage, HostUsage};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Scope;

/// Where an agent process's reports stand, told to it when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The last seq of its epoch stored (0 for a new epoch).
    pub acked_seq: i64,
    /// The engine time of the last lifecycle event stored for the VM, in nanoseconds (0: none).
    pub last_event_nanos: i64,
}

/// A VM whose heartbeat is overdue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its last heartbeat, if it ever sent one.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

/// Records that the stream `stream_id` of an agent process of `epoch` connected for the VM;
/// answers where that process's reports stand.
pub async fn connected(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    epoch: &str,
    stream_id: Uuid,
) -> Result<Resume, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let resume = sqlx::query_as!(
        Resume,
        r#"INSERT INTO vm_presence (tenant_id, vm_name, connected, connected_at, epoch, acked_seq,
                                   stream_id)
           VALUES ($1, $2, true, now(), $3, 0, $4)
           ON CONFLICT (tenant_id, vm_name) DO UPDATE SET
               connected = true,
               connected_at = now(),
               acked_seq = CASE WHEN vm_presence.epoch = excluded.epoch
                                THEN vm_presence.acked_seq ELSE 0 END,
               epoch = excluded.epoch,
               stream_id = excluded.stream_id
           RETURNING acked_seq, last_event_nanos"#,
        tenant_id,
        vm,
        epoch,
        stream_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(resume)
}

/// Records that the stream `stream_id` ended (unless another stream connected since: a
/// reconnection may reach a replica before the old stream's end is noticed).
pub async fn disconnected(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    stream_id: Uuid,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    sqlx::query!(
        r#"UPDATE vm_presence SET connected = false, disconnected_at = now()
           WHERE tenant_id = $1 AND vm_name = $2 AND stream_id = $3"#,
        tenant_id,
        vm,
        stream_id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Reports of an agent process (`epoch`) stored up to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    /// The agent process.
    pub epoch: &'a str,
    /// The last seq stored.
    pub seq: i64,
}

/// Records that the reports of `stored.epoch` up to `stored.seq` are stored, and the engine time
/// of the last lifecycle event stored with them. Not flushed to disk before it answers: what it
/// records is also in the log or may be repeated (a report resent after a crash of Postgres is
/// stored once: lifecycle events are recorded once per container, time and kind).
pub async fn stored(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    stored: Stored<'_>,
    last_event_nanos: Option<i64>,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::System.begin_unflushed(pool).await?;
    mark_stored(&mut tx, tenant_id, vm, stored, last_event_nanos).await?;
    tx.commit().await
}

async fn mark_stored(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    vm: &str,
    stored: Stored<'_>,
    last_event_nanos: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE vm_presence SET acked_seq = greatest(acked_seq, $4),
                                  last_event_nanos = greatest(last_event_nanos, coalesce($5::bigint, 0))
           WHERE tenant_id = $1 AND vm_name = $2 AND epoch = $3"#,
        tenant_id,
        vm,
        stored.epoch,
        stored.seq,
        last_event_nanos,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A heartbeat: the engine's error (`None`: it answers), the host's utilisation when the
/// heartbeat carries it, and the report it came in (`None`: `Hello` standing for one).
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    /// Why the engine does not answer, if it does not.
    pub engine_error: Option<&'a str>,
    /// The host's utilisation.
    pub usage: Option<&'a HostUsage>,
    /// The report, stored with the heartbeat.
    pub report: Option<Stored<'a>>,
}

/// Records a heartbeat, its utilisation sample and its report in one transaction, not flushed
/// to disk before it answers (a heartbeat lost to a crash of Postgres is followed by the next).
/// A sample that cannot be stored (its day's partition missing) is logged and lost, never the
/// heartbeat nor the utilisation it tells.
pub async fn heartbeat(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    beat: Beat<'_>,
) -> Result<(), sqlx::Error> {
    use sqlx::Acquire as _;
    let mut tx = Scope::System.begin_unflushed(pool).await?;
    let usage_json = beat
        .usage
        .map(|usage| serde_json::to_value(usage).unwrap_or_default());
    sqlx::query!(
        r#"INSERT INTO vm_presence (tenant_id, vm_name, last_heartbeat_at, engine_reachable,
                                   engine_error, usage)
           VALUES ($1, $2, now(), $3, $4, $5)
           ON CONFLICT (tenant_id, vm_name) DO UPDATE SET
               last_heartbeat_at = now(), engine_reachable = excluded.engine_reachable,
               engine_error = excluded.engine_error,
               usage = coalesce(excluded.usage, vm_presence.usage)"#,
        tenant_id,
        vm,
        beat.engine_error.is_none(),
        beat.engine_error,
        usage_json,
    )
    .execute(&mut *tx)
    .await?;
    if let Some(report) = beat.report {
        mark_stored(&mut tx, tenant_id, vm, report, None).await?;
    }
    if let Some(usage) = beat.usage {
        let mut sample = tx.begin().await?;
        match vm_sample(&mut sample, tenant_id, vm, usage).await {
            Ok(()) => sample.commit().await?,
            Err(error) => {
                tracing::warn!(%error, %vm, "a utilisation sample could not be stored");
                sample.rollback().await?;
            }
        }
    }
    tx.commit().await
}

async fn vm_sample(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    vm: &str,
    usage: &HostUsage,
) -> Result<(), sqlx::Error> {
    let disks = serde_json::to_value(&usage.disks).unwrap_or_default();
    #[allow(clippy::cast_possible_truncation)]
    let (cpu, load) = (usage.cpu_percent as f32, usage.load.map(|load| load as f32));
    sqlx::query!(
        r#"INSERT INTO vm_samples (tenant_id, vm_name, sampled_at, cpu_percent, load_1m, load_5m,
               load_15m, memory_used_bytes, memory_total_bytes, network_rx_bytes_per_second,
               network_tx_bytes_per_second, disks)
           VALUES ($1, $2, now(), $3, $4, $5, $6, $7, $8, $9, $10, $11)"#,
        tenant_id,
        vm,
        cpu,
        load[0],
        load[1],
        load[2],
        i64::try_from(usage.memory_used_bytes).unwrap_or(i64::MAX),
        i64::try_from(usage.memory_total_bytes).unwrap_or(i64::MAX),
        usage.network_rx_bytes_per_second,
        usage.network_tx_bytes_per_second,
        disks,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores one round of container usage samples with the report they came in, in one transaction
/// not flushed to disk before it answers. Samples that cannot be stored (their day's partition
/// missing) are logged and lost; the report is recorded as stored all the same.
pub async fn container_samples(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
    usages: &[ContainerUsage],
    report: Stored<'_>,
) -> Result<(), sqlx::Error> {
    let attempt = async {
        let mut tx = Scope::System.begin_unflushed(pool).await?;
        insert_container_samples(&mut tx, tenant_id, vm, usages).await?;
        mark_stored(&mut tx, tenant_id, vm, report, None).await?;
        tx.commit().await
    };
    match attempt.await {
        Err(error) if !usages.is_empty() => {
            tracing::warn!(%error, %vm, "container samples could not be stored");
            stored(pool, tenant_id, vm, report, None).await
        }
        done => done,
    }
}

async fn insert_container_samples(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    vm: &str,
    usages: &[ContainerUsage],
) -> Result<(), sqlx::Error> {
    if usages.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = usages.iter().map(|u| u.container_id.clone()).collect();
    #[allow(clippy::cast_possible_truncation)]
    let cpu: Vec<f32> = usages.iter().map(|u| u.cpu_percent as f32).collect();
    let memory: Vec<i64> = usages
        .iter()
        .map(|u| i64::try_from(u.memory_used_bytes).unwrap_or(i64::MAX))
        .collect();
    let limits: Vec<Option<i64>> = usages
        .iter()
        .map(|u| {
            u.memory_limit_bytes
                .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
        })
        .collect();
    let pids: Vec<Option<i64>> = usages
        .iter()
        .map(|u| u.pids.map(|p| i64::try_from(p).unwrap_or(i64::MAX)))
        .collect();
    sqlx::query!(
        r#"INSERT INTO container_samples (tenant_id, container_id, vm_name, sampled_at, cpu_percent,
               memory_used_bytes, memory_limit_bytes, pids)
           SELECT $1, u.id, $2, now(), u.cpu, u.memory, u.memory_limit, u.pids
           FROM UNNEST($3::text[], $4::real[], $5::bigint[], $6::bigint[], $7::bigint[])
                AS u(id, cpu, memory, memory_limit, pids)"#,
        tenant_id,
        vm,
        &ids,
        &cpu,
        &memory,
        &limits as &[Option<i64>],
        &pids as &[Option<i64>],
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The VMs shown up (`ready`, `docker_unreachable`) whose last heartbeat is older than `silence`.
pub async fn overdue(pool: &PgPool, silence: Duration) -> Result<Vec<Overdue>, sqlx::Error> {
    let silence_ms = i64::try_from(silence.as_millis()).unwrap_or(i64::MAX);
    let mut tx = Scope::System.begin(pool).await?;
    let overdue = sqlx::query_as!(
        Overdue,
        r#"SELECT v.tenant_id, v.name, p.last_heartbeat_at AS "last_heartbeat_at?"
           FROM vms v
           LEFT JOIN vm_presence p ON p.tenant_id = v.tenant_id AND p.vm_name = v.name
           WHERE v.state IN ('ready', 'docker_unreachable')
             AND (p.last_heartbeat_at IS NULL
                  OR p.last_heartbeat_at < now() - make_interval(secs => $1::bigint / 1000.0))"#,
        silence_ms,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(overdue)
}

/// The VM's last heartbeat now (read just before taking it down).
pub async fn last_heartbeat(
    pool: &PgPool,
    tenant_id: Uuid,
    vm: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let at = sqlx::query_scalar!(
        "SELECT last_heartbeat_at FROM vm_presence WHERE tenant_id = $1 AND vm_name = $2",
        tenant_id,
        vm,
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    tx.commit().await?;
    Ok(at)
}

/// Creates the sample tables' daily partitions from `keep_days` ago to two days ahead and drops
/// the older ones; answers how many partitions it created or dropped.
pub async fn maintain_samples(pool: &PgPool, keep_days: i32) -> Result<i32, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let changed = sqlx::query_scalar!(
        r#"SELECT efms_fleet_sample_partitions($1, 2) AS "changed!""#,
        keep_days
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed)
}
