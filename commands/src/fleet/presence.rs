//! What the agents' streams store beside the log: presence (`vm_presence`: connected, last
//! heartbeat, engine, utilisation now, where each agent process's reports stand) and utilisation
//! samples (`vm_samples`, `container_samples`, partitioned by day). The reports themselves are
//! written together by the replica's [`super::presence_writer`]; this module holds a stream's
//! connection and end, and what the sweeps and upkeep read and keep.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
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

/// Whether an agent stream of the VM is open now (as the replica holding it recorded).
pub async fn is_connected(pool: &PgPool, tenant_id: Uuid, vm: &str) -> Result<bool, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let connected = sqlx::query_scalar!(
        "SELECT connected FROM vm_presence WHERE tenant_id = $1 AND vm_name = $2",
        tenant_id,
        vm,
    )
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or(false);
    tx.commit().await?;
    Ok(connected)
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
