//! The metric kinds of rule, over the proxies' own statistics (ADR 0013): a route's 5xx share or
//! p99 over a window, its 5xx share against its own recent past, a cluster's healthy endpoints.

use std::time::Duration;

use chrono::Utc;
use efms_domain::telemetry::{StatScope, StatValues};
use efms_projections::telemetry::{series, Series, SeriesQuery};
use sqlx::PgPool;
use uuid::Uuid;

use super::conditions::Finding;

/// The share of a step's answers that were 5xx, with its requests.
fn five_xx(values: &StatValues) -> (f64, i64) {
    let answered: i64 = values.responses.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    let share = if answered > 0 {
        values.responses[3] as f64 / answered as f64
    } else {
        0.0
    };
    (share, values.requests.max(answered))
}

fn seconds(window: Duration) -> i64 {
    i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// `scope`'s series of `tenant_id` over the `window` ending now, in one step.
async fn last(
    pool: &PgPool,
    tenant_id: Uuid,
    scope: StatScope,
    window: Duration,
) -> Result<Vec<Series>, sqlx::Error> {
    let to = Utc::now();
    let step = seconds(window);
    series(
        pool,
        &SeriesQuery {
            tenant_id,
            group: None,
            scope,
            names: None,
            from: to - chrono::TimeDelta::seconds(step),
            to,
            step,
        },
    )
    .await
}

fn route_subject(series: &Series) -> String {
    format!("route/{}/{}", series.name, series.detail)
}

/// The routes of `tenant_id` that `judge` finds wrong over the `window` ending now (it answers
/// what is wrong), among those with at least `min_requests` requests in it.
async fn routes_where(
    pool: &PgPool,
    tenant_id: Uuid,
    (window, min_requests): (Duration, u64),
    judge: impl Fn(&StatValues) -> Option<String>,
) -> Result<Vec<Finding>, sqlx::Error> {
    let floor = i64::try_from(min_requests).unwrap_or(i64::MAX);
    Ok(last(pool, tenant_id, StatScope::Route, window)
        .await?
        .iter()
        .filter_map(|route| {
            let (_, values) = route.points.last()?;
            if five_xx(values).1 < floor {
                return None;
            }
            let wrong = judge(values)?;
            Some(Finding {
                subject: route_subject(route),
                since: None,
                summary: format!(
                    "route {} of {}: {wrong} within {}s",
                    route.detail,
                    route.name,
                    window.as_secs()
                ),
            })
        })
        .collect())
}

/// Routes whose 5xx share over `window` is above `ratio`.
pub(super) async fn route_5xx_ratio(
    pool: &PgPool,
    tenant_id: Uuid,
    (ratio, window, min_requests): (f64, Duration, u64),
) -> Result<Vec<Finding>, sqlx::Error> {
    routes_where(pool, tenant_id, (window, min_requests), |values| {
        let (share, requests) = five_xx(values);
        (share > ratio).then(|| {
            format!(
                "{:.1} % of {requests} answers were 5xx (above {:.1} %)",
                share * 100.0,
                ratio * 100.0
            )
        })
    })
    .await
}

/// Routes whose p99 over `window` is above `ms`.
pub(super) async fn route_p99(
    pool: &PgPool,
    tenant_id: Uuid,
    (ms, window, min_requests): (f64, Duration, u64),
) -> Result<Vec<Finding>, sqlx::Error> {
    routes_where(pool, tenant_id, (window, min_requests), |values| {
        let p99 = values.latency.quantile(0.99)?;
        (p99 > ms).then(|| format!("p99 {p99:.0} ms (above {ms:.0} ms)"))
    })
    .await
}

/// What a route anomaly rule judges by.
#[derive(Debug, Clone, Copy)]
pub(super) struct Anomaly {
    /// Standard deviations.
    pub k: f64,
    /// The least departure.
    pub floor: f64,
    /// The window judged.
    pub window: Duration,
    /// The past before it.
    pub baseline: Duration,
    /// The least requests in the window.
    pub min_requests: u64,
}

/// Routes whose 5xx share over the window is above the mean of their minutes over the baseline
/// by more than `k` standard deviations and the floor.
pub(super) async fn route_5xx_anomaly(
    pool: &PgPool,
    tenant_id: Uuid,
    rule: Anomaly,
) -> Result<Vec<Finding>, sqlx::Error> {
    let now_series = last(pool, tenant_id, StatScope::Route, rule.window).await?;
    let to = Utc::now() - chrono::TimeDelta::seconds(seconds(rule.window));
    let step = 60.min(seconds(rule.baseline));
    let past = series(
        pool,
        &SeriesQuery {
            tenant_id,
            group: None,
            scope: StatScope::Route,
            names: None,
            from: to - chrono::TimeDelta::seconds(seconds(rule.baseline)),
            to,
            step,
        },
    )
    .await?;
    let floor = i64::try_from(rule.min_requests).unwrap_or(i64::MAX);
    Ok(now_series
        .iter()
        .filter_map(|route| {
            let (_, values) = route.points.last()?;
            let (share, requests) = five_xx(values);
            if requests < floor {
                return None;
            }
            let before: Vec<f64> = past
                .iter()
                .find(|old| old.name == route.name && old.detail == route.detail)
                .map(|old| {
                    old.points
                        .iter()
                        .map(|(_, values)| five_xx(values))
                        .filter(|(_, requests)| *requests > 0)
                        .map(|(share, _)| share)
                        .collect()
                })
                .unwrap_or_default();
            #[allow(clippy::cast_precision_loss)]
            let count = before.len().max(1) as f64;
            let mean = before.iter().sum::<f64>() / count;
            let deviation =
                (before.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / count).sqrt();
            let bound = mean + rule.k * deviation + rule.floor;
            (share > bound).then(|| Finding {
                subject: route_subject(route),
                since: None,
                summary: format!(
                    "route {} of {}: {:.1} % 5xx within {}s, against {:.1} % ± {:.1} over the {}s before",
                    route.detail,
                    route.name,
                    share * 100.0,
                    rule.window.as_secs(),
                    mean * 100.0,
                    deviation * 100.0,
                    rule.baseline.as_secs()
                ),
            })
        })
        .collect())
}

/// Clusters whose healthy endpoints are below `percent` of their endpoints (over the last
/// minute's reports).
pub(super) async fn cluster_healthy_below(
    pool: &PgPool,
    tenant_id: Uuid,
    percent: f64,
) -> Result<Vec<Finding>, sqlx::Error> {
    Ok(
        last(pool, tenant_id, StatScope::Cluster, Duration::from_secs(60))
            .await?
            .iter()
            .filter_map(|cluster| {
                let (_, values) = cluster.points.last()?;
                let (healthy, total) = (values.endpoints_healthy?, values.endpoints_total?);
                #[allow(clippy::cast_precision_loss)]
                let share = if total > 0 {
                    healthy as f64 * 100.0 / total as f64
                } else {
                    return None;
                };
                (share < percent).then(|| Finding {
                    subject: format!("cluster/{}", cluster.name),
                    since: None,
                    summary: format!(
                        "cluster {}: {healthy} of {total} endpoints healthy (below {percent:.0} %)",
                        cluster.name
                    ),
                })
            })
            .collect(),
    )
}
