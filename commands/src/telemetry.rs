//! The proxies' statistics as stored (`proxy_stats`, `proxy_stats_1m`): each replica writes the
//! buckets it gathered once they end, and the fleet's upkeep rolls them up by the minute and keeps
//! their partitions.

use efms_domain::telemetry::{StatRow, LATENCY_SLOTS};
use sqlx::PgPool;

use crate::fleet::rollups::{mark, window, Table};
use crate::Scope;

/// Writes `rows` in one statement; how many were written.
pub async fn write_rows(pool: &PgPool, rows: &[StatRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut columns = Columns::default();
    for row in rows {
        columns.push(row);
    }
    let mut tx = Scope::System.begin(pool).await?;
    // Statistics may be lost with a crash anyway (they are in memory until their bucket ends):
    // the commit need not wait for the WAL flush.
    sqlx::query!("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let written = sqlx::query!(
        r#"INSERT INTO proxy_stats (tenant_id, group_name, scope, name, detail, bucket, seconds,
               proxies, requests, responses, retries, connections_new, bytes_in, bytes_out,
               connections_active, circuit_breakers_open, endpoints_healthy, endpoints_total,
               latency_count, latency_sum_ms, latency_slots)
           SELECT t.tenant_id, t.group_name, t.scope, t.name, t.detail, t.bucket, t.seconds,
                  t.proxies, t.requests, ARRAY[t.r2, t.r3, t.r4, t.r5], t.retries,
                  t.connections_new, t.bytes_in, t.bytes_out, t.connections_active,
                  t.circuit_breakers_open, t.endpoints_healthy, t.endpoints_total,
                  t.latency_count, t.latency_sum_ms,
                  ($24::int8[])[(t.ord - 1) * 20 + 1 : t.ord * 20]
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::timestamptz[], $7::int4[], $8::int4[], $9::int8[], $10::int8[],
                       $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[],
                       $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::int8[],
                       $21::int8[], $22::int8[], $23::float8[])
                WITH ORDINALITY AS t(tenant_id, group_name, scope, name, detail, bucket, seconds,
                    proxies, requests, r2, r3, r4, r5, retries, connections_new, bytes_in,
                    bytes_out, connections_active, circuit_breakers_open, endpoints_healthy,
                    endpoints_total, latency_count, latency_sum_ms, ord)"#,
        &columns.tenant_id,
        &columns.group as &[String],
        &columns.scope as &[String],
        &columns.name as &[String],
        &columns.detail as &[String],
        &columns.bucket,
        &columns.seconds,
        &columns.proxies,
        &columns.requests,
        &columns.responses[0],
        &columns.responses[1],
        &columns.responses[2],
        &columns.responses[3],
        &columns.retries,
        &columns.connections_new,
        &columns.bytes_in,
        &columns.bytes_out,
        &columns.connections_active as &[Option<i64>],
        &columns.circuit_breakers_open as &[Option<i64>],
        &columns.endpoints_healthy as &[Option<i64>],
        &columns.endpoints_total as &[Option<i64>],
        &columns.latency_count,
        &columns.latency_sum_ms,
        &columns.latency_slots,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(written)
}

/// Rows as parallel arrays, one per column.
#[derive(Default)]
struct Columns {
    tenant_id: Vec<uuid::Uuid>,
    group: Vec<String>,
    scope: Vec<String>,
    name: Vec<String>,
    detail: Vec<String>,
    bucket: Vec<chrono::DateTime<chrono::Utc>>,
    seconds: Vec<i32>,
    proxies: Vec<i32>,
    requests: Vec<i64>,
    responses: [Vec<i64>; 4],
    retries: Vec<i64>,
    connections_new: Vec<i64>,
    bytes_in: Vec<i64>,
    bytes_out: Vec<i64>,
    connections_active: Vec<Option<i64>>,
    circuit_breakers_open: Vec<Option<i64>>,
    endpoints_healthy: Vec<Option<i64>>,
    endpoints_total: Vec<Option<i64>>,
    latency_count: Vec<i64>,
    latency_sum_ms: Vec<f64>,
    /// Every row's slots, one after the other.
    latency_slots: Vec<i64>,
}

impl Columns {
    fn push(&mut self, row: &StatRow) {
        let values = &row.values;
        self.tenant_id.push(row.tenant_id);
        self.group.push(row.group.clone());
        self.scope.push(row.key.scope.as_str().to_owned());
        self.name.push(row.key.name.clone());
        self.detail.push(row.key.detail.clone());
        self.bucket.push(row.bucket);
        self.seconds.push(row.seconds);
        self.proxies.push(row.proxies);
        self.requests.push(values.requests);
        for (column, value) in self.responses.iter_mut().zip(values.responses) {
            column.push(value);
        }
        self.retries.push(values.retries);
        self.connections_new.push(values.connections_new);
        self.bytes_in.push(values.bytes_in);
        self.bytes_out.push(values.bytes_out);
        self.connections_active.push(values.connections_active);
        self.circuit_breakers_open
            .push(values.circuit_breakers_open);
        self.endpoints_healthy.push(values.endpoints_healthy);
        self.endpoints_total.push(values.endpoints_total);
        self.latency_count.push(values.latency.count);
        self.latency_sum_ms.push(values.latency.sum_ms);
        debug_assert_eq!(values.latency.slots.len(), LATENCY_SLOTS);
        self.latency_slots.extend_from_slice(&values.latency.slots);
    }
}

/// Rolls up the minutes of `proxy_stats` that are due into `proxy_stats_1m`: counters and
/// histograms add up, gauges are the mean over the minute's buckets of their sum over proxies and
/// replicas. How many rollup rows were written.
pub async fn roll_up(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let Some((from, upto)) = window(&mut tx, Table::ProxyStats).await? else {
        return Ok(0);
    };
    let written = sqlx::query!(
        r#"INSERT INTO proxy_stats_1m (tenant_id, group_name, scope, name, detail, bucket, seconds,
               proxies, requests, responses, retries, connections_new, bytes_in, bytes_out,
               connections_active, circuit_breakers_open, endpoints_healthy, endpoints_total,
               latency_count, latency_sum_ms, latency_slots)
           SELECT tenant_id, group_name, scope, name, detail, date_trunc('minute', bucket), 60,
                  max(proxies), sum(requests),
                  ARRAY[sum(responses[1]), sum(responses[2]), sum(responses[3]),
                        sum(responses[4])]::int8[],
                  sum(retries), sum(connections_new), sum(bytes_in), sum(bytes_out),
                  (sum(connections_active) / nullif(count(DISTINCT bucket)
                      FILTER (WHERE connections_active IS NOT NULL), 0))::int8,
                  (sum(circuit_breakers_open) / nullif(count(DISTINCT bucket)
                      FILTER (WHERE circuit_breakers_open IS NOT NULL), 0))::int8,
                  (sum(endpoints_healthy) / nullif(count(DISTINCT bucket)
                      FILTER (WHERE endpoints_healthy IS NOT NULL), 0))::int8,
                  (sum(endpoints_total) / nullif(count(DISTINCT bucket)
                      FILTER (WHERE endpoints_total IS NOT NULL), 0))::int8,
                  sum(latency_count), sum(latency_sum_ms),
                  ARRAY[sum(latency_slots[1]),
                        sum(latency_slots[2]),
                        sum(latency_slots[3]),
                        sum(latency_slots[4]),
                        sum(latency_slots[5]),
                        sum(latency_slots[6]),
                        sum(latency_slots[7]),
                        sum(latency_slots[8]),
                        sum(latency_slots[9]),
                        sum(latency_slots[10]),
                        sum(latency_slots[11]),
                        sum(latency_slots[12]),
                        sum(latency_slots[13]),
                        sum(latency_slots[14]),
                        sum(latency_slots[15]),
                        sum(latency_slots[16]),
                        sum(latency_slots[17]),
                        sum(latency_slots[18]),
                        sum(latency_slots[19]),
                        sum(latency_slots[20])]::int8[]
           FROM proxy_stats WHERE bucket >= $1 AND bucket < $2
           GROUP BY tenant_id, group_name, scope, name, detail, date_trunc('minute', bucket)"#,
        from,
        upto,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    mark(&mut tx, Table::ProxyStats, upto).await?;
    tx.commit().await?;
    Ok(written)
}

/// Creates the statistics' daily partitions ahead and drops those older than `raw_days` (raw)
/// and `rollup_days` (rollups); how many partitions were created or dropped.
pub async fn maintain(pool: &PgPool, raw_days: i32, rollup_days: i32) -> Result<i32, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let changed = sqlx::query_scalar!(
        r#"SELECT efms_fleet_daily_partitions(ARRAY['proxy_stats'], $1, 2)
                + efms_fleet_daily_partitions(ARRAY['proxy_stats_1m'], $2, 2) AS "changed!""#,
        raw_days,
        rollup_days,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed)
}
