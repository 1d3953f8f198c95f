//! The proxies' statistics as time series: the stored buckets of a series (every replica's rows
//! added up), folded into steps. A step of whole minutes from a whole minute reads the one-minute
//! rollups up to where they reach and the raw buckets after it, so every bucket is counted once.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use efms_commands::Scope;
use efms_domain::telemetry::{Latency, StatScope, StatValues, LATENCY_SLOTS};
use sqlx::PgPool;
use uuid::Uuid;

/// Which series, over which time.
#[derive(Debug, Clone)]
pub struct SeriesQuery<'a> {
    /// The tenant.
    pub tenant_id: Uuid,
    /// One group's proxies only, or all of the tenant's.
    pub group: Option<&'a str>,
    /// What kind of subject.
    pub scope: StatScope,
    /// The subjects' names (for routes, their virtual hosts); `None`: every subject of the scope.
    pub names: Option<&'a [String]>,
    /// From (included).
    pub from: DateTime<Utc>,
    /// To (excluded).
    pub to: DateTime<Utc>,
    /// The step, in seconds.
    pub step: i64,
}

/// One subject's series: a point per step, from the query's `from` on.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The subject's name.
    pub name: String,
    /// For a route, its `stat_prefix`.
    pub detail: String,
    /// Each step's start and values (zero counts where nothing was reported).
    pub points: Vec<(DateTime<Utc>, StatValues)>,
}

/// The series of `query`, one per subject that reported anything, in name order.
pub async fn series(pool: &PgPool, query: &SeriesQuery<'_>) -> Result<Vec<Series>, sqlx::Error> {
    let mut tx = Scope::Tenant(query.tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"WITH mark AS (
               SELECT CASE WHEN $7 THEN coalesce(
                          (SELECT rolled_up_to FROM sample_rollups WHERE name = 'proxy_stats'),
                          '-infinity'::timestamptz)
                      ELSE '-infinity'::timestamptz END AS at)
           SELECT name AS "name!", detail AS "detail!", bucket AS "bucket!",
                  requests AS "requests!", responses AS "responses!", retries AS "retries!",
                  connections_new AS "connections_new!", bytes_in AS "bytes_in!",
                  bytes_out AS "bytes_out!", connections_active, circuit_breakers_open,
                  endpoints_healthy, endpoints_total, latency_count AS "latency_count!",
                  latency_sum_ms AS "latency_sum_ms!", latency_slots AS "latency_slots!"
           FROM proxy_stats_1m, mark
           WHERE tenant_id = $1 AND scope = $2 AND ($3::text[] IS NULL OR name = ANY($3))
             AND ($4::text IS NULL OR group_name = $4)
             AND bucket >= $5 AND bucket < least($6, mark.at)
           UNION ALL
           SELECT name, detail, bucket, requests, responses, retries, connections_new, bytes_in,
                  bytes_out, connections_active, circuit_breakers_open, endpoints_healthy,
                  endpoints_total, latency_count, latency_sum_ms, latency_slots
           FROM proxy_stats, mark
           WHERE tenant_id = $1 AND scope = $2 AND ($3::text[] IS NULL OR name = ANY($3))
             AND ($4::text IS NULL OR group_name = $4)
             AND bucket >= greatest($5, mark.at) AND bucket < $6"#,
        query.tenant_id,
        query.scope.as_str(),
        query.names,
        query.group,
        query.from,
        query.to,
        // Rollups stand for whole minutes: only steps of whole minutes from a whole minute read
        // them (others read the raw buckets, kept a day by default).
        query.step % 60 == 0 && query.from.timestamp() % 60 == 0,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // Every replica's row of a bucket, added up.
    let mut buckets: BTreeMap<(String, String, DateTime<Utc>), StatValues> = BTreeMap::new();
    for row in rows {
        let mut latency = Latency {
            count: row.latency_count,
            sum_ms: row.latency_sum_ms,
            ..Latency::default()
        };
        for (slot, count) in latency
            .slots
            .iter_mut()
            .zip(row.latency_slots.iter().take(LATENCY_SLOTS))
        {
            *slot = *count;
        }
        let mut responses = [0; 4];
        for (slot, count) in responses.iter_mut().zip(&row.responses) {
            *slot = *count;
        }
        let values = StatValues {
            requests: row.requests,
            responses,
            retries: row.retries,
            connections_new: row.connections_new,
            bytes_in: row.bytes_in,
            bytes_out: row.bytes_out,
            connections_active: row.connections_active,
            circuit_breakers_open: row.circuit_breakers_open,
            endpoints_healthy: row.endpoints_healthy,
            endpoints_total: row.endpoints_total,
            latency,
        };
        buckets
            .entry((row.name, row.detail, row.bucket))
            .or_default()
            .merge(&values);
    }
    Ok(into_steps(query, buckets))
}

/// The buckets folded into the query's steps, every step present.
fn into_steps(
    query: &SeriesQuery<'_>,
    buckets: BTreeMap<(String, String, DateTime<Utc>), StatValues>,
) -> Vec<Series> {
    let step = query.step.max(1);
    let steps =
        usize::try_from(((query.to - query.from).num_seconds() + step - 1) / step).unwrap_or(0);
    let mut by_subject: BTreeMap<(String, String), Vec<Vec<StatValues>>> = BTreeMap::new();
    for ((name, detail, bucket), values) in buckets {
        let Ok(index) = usize::try_from((bucket - query.from).num_seconds() / step) else {
            continue;
        };
        let spans = by_subject
            .entry((name, detail))
            .or_insert_with(|| vec![Vec::new(); steps]);
        if let Some(span) = spans.get_mut(index) {
            span.push(values);
        }
    }
    by_subject
        .into_iter()
        .map(|((name, detail), spans)| Series {
            name,
            detail,
            points: spans
                .iter()
                .enumerate()
                .map(|(index, span)| {
                    let offset = i64::try_from(index).unwrap_or(i64::MAX) * step;
                    (
                        query.from + Duration::seconds(offset),
                        StatValues::over_time(span),
                    )
                })
                .collect(),
        })
        .collect()
}
