//! One-minute rollups of the utilisation samples (`vm_samples_1m`, `container_samples_1m`), kept
//! far longer than the raw samples: per VM and per container, each minute's sample count, sums
//! and maxima. Minutes are rolled up once they ended [`LATE_SAMPLES`] ago, in order, at most
//! [`MAX_SPAN`] per round; `sample_rollups` holds up to where, so a read joins the rollups before
//! that mark with the raw samples after it and sees every sample once.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::Scope;

/// How long after a minute ends its samples may still arrive; it is rolled up after that.
pub const LATE_SAMPLES: &str = "1 minute";
/// The most time one round rolls up (a replica back after a long stop catches up in steps).
pub const MAX_SPAN: &str = "6 hours";

/// Rolls up the minutes of both sample tables that are due; how many rollup rows were written.
pub async fn roll_up(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let mut written = 0;
    if let Some((from, upto)) = window(&mut tx, Table::Vm).await? {
        written += sqlx::query!(
            r#"INSERT INTO vm_samples_1m (tenant_id, vm_name, minute, samples, cpu_percent_sum,
                   cpu_percent_max, load_1m_sum, memory_used_bytes_sum, memory_used_bytes_max,
                   network_rx_bytes_per_second_sum, network_tx_bytes_per_second_sum)
               SELECT tenant_id, vm_name, date_trunc('minute', sampled_at), count(*),
                      sum(cpu_percent), max(cpu_percent), sum(load_1m), sum(memory_used_bytes),
                      max(memory_used_bytes), sum(network_rx_bytes_per_second),
                      sum(network_tx_bytes_per_second)
               FROM vm_samples WHERE sampled_at >= $1 AND sampled_at < $2
               GROUP BY 1, 2, 3
               ON CONFLICT DO NOTHING"#,
            from,
            upto,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        mark(&mut tx, Table::Vm, upto).await?;
    }
    if let Some((from, upto)) = window(&mut tx, Table::Container).await? {
        written += sqlx::query!(
            r#"INSERT INTO container_samples_1m (tenant_id, container_id, vm_name, minute, samples,
                   cpu_percent_sum, cpu_percent_max, memory_used_bytes_sum, memory_used_bytes_max)
               SELECT s.tenant_id, encode(u.id, 'hex'), min(s.vm_name),
                      date_trunc('minute', s.sampled_at), count(*), sum(u.cpu), max(u.cpu),
                      sum(u.memory), max(u.memory)
               FROM container_samples s,
                    UNNEST(s.container_ids, s.cpu_percent, s.memory_used_bytes) AS u(id, cpu, memory)
               WHERE s.sampled_at >= $1 AND s.sampled_at < $2
               GROUP BY s.tenant_id, u.id, date_trunc('minute', s.sampled_at)
               ON CONFLICT DO NOTHING"#,
            from,
            upto,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        mark(&mut tx, Table::Container, upto).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// Creates the rollup tables' daily partitions ahead and drops those older than `keep_days`;
/// how many partitions were created or dropped.
pub async fn maintain_rollups(pool: &PgPool, keep_days: i32) -> Result<i32, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let changed = sqlx::query_scalar!(
        r#"SELECT efms_fleet_daily_partitions(ARRAY['vm_samples_1m', 'container_samples_1m'], $1, 2)
           AS "changed!""#,
        keep_days
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed)
}

/// Creates the event feed's facts' daily partitions ahead (their writers, triggers of the status
/// and job tables, have nowhere to write without them) and drops those older than `keep_days`,
/// first moving each tenant's feed horizon past the last fact they hold, so that a cursor before
/// it is told that facts are gone rather than skipping them.
pub async fn maintain_feed_facts(pool: &PgPool, keep_days: i32) -> Result<i32, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    // The partition of a day holds the facts from its midnight (UTC) to the next: those the
    // function below drops are exactly the facts older than midnight `keep_days` days ago.
    sqlx::query(
        "INSERT INTO feed_horizons (tenant_id, tx_id, position)
         SELECT DISTINCT ON (tenant_id) tenant_id, tx_id, position
         FROM feed_facts
         WHERE at < ((now() AT TIME ZONE 'UTC')::date - $1)::timestamp AT TIME ZONE 'UTC'
         ORDER BY tenant_id, tx_id DESC, position DESC
         ON CONFLICT (tenant_id) DO UPDATE
         SET tx_id = excluded.tx_id, position = excluded.position, dropped_at = now()
         WHERE (excluded.tx_id, excluded.position) > (feed_horizons.tx_id, feed_horizons.position)",
    )
    .bind(keep_days)
    .execute(&mut *tx)
    .await?;
    let changed = sqlx::query_scalar!(
        r#"SELECT efms_fleet_daily_partitions(ARRAY['feed_facts'], $1, 2) AS "changed!""#,
        keep_days
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed)
}

/// Creates the proxies' history's daily partitions ahead (the status writer has nowhere to write
/// without them), drops those older than `keep_days`, and drops the history kept from before its
/// partitioning once all of it is that old; how many tables were created or dropped.
pub async fn maintain_proxy_history(pool: &PgPool, keep_days: i32) -> Result<i32, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let changed: i32 = sqlx::query_scalar("SELECT efms_proxy_history_retention($1)")
        .bind(keep_days)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(changed)
}

/// A sample table rolled up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Vm,
    Container,
    /// The proxies' statistics (see [`crate::telemetry`]).
    ProxyStats,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Vm => "vm",
            Table::Container => "container",
            Table::ProxyStats => "proxy_stats",
        }
    }
}

/// The span `[from, upto)` of `table` due for rollup, with its mark locked for the transaction;
/// `None` when no whole minute is due. The first round starts at the table's first sample.
pub(crate) async fn window(
    tx: &mut PgConnection,
    table: Table,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    let marked = sqlx::query_scalar!(
        "SELECT rolled_up_to FROM sample_rollups WHERE name = $1 FOR UPDATE",
        table.name()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let from = if let Some(from) = marked {
        from
    } else {
        // Only the first round looks for the first sample.
        let first = match table {
            Table::Vm => {
                sqlx::query_scalar!(r#"SELECT min(sampled_at) FROM vm_samples"#)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Table::Container => {
                sqlx::query_scalar!(r#"SELECT min(sampled_at) FROM container_samples"#)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Table::ProxyStats => {
                sqlx::query_scalar!(r#"SELECT min(bucket) FROM proxy_stats"#)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let Some(first) = first else {
            return Ok(None);
        };
        sqlx::query_scalar!(
            r#"INSERT INTO sample_rollups (name, rolled_up_to)
               VALUES ($1, date_trunc('minute', $2::timestamptz))
               ON CONFLICT (name) DO UPDATE SET rolled_up_to = sample_rollups.rolled_up_to
               RETURNING rolled_up_to"#,
            table.name(),
            first,
        )
        .fetch_one(&mut *tx)
        .await?
    };
    let upto = sqlx::query_scalar!(
        r#"SELECT least(date_trunc('minute', now() - $1::text::interval),
                        $2::timestamptz + $3::text::interval) AS "upto!""#,
        LATE_SAMPLES,
        from,
        MAX_SPAN,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((upto > from).then_some((from, upto)))
}

/// Records that `table` is rolled up to `upto`.
pub(crate) async fn mark(
    tx: &mut PgConnection,
    table: Table,
    upto: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sample_rollups SET rolled_up_to = $2 WHERE name = $1",
        table.name(),
        upto
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
