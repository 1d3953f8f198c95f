//! A change judged by its effect: `GET /api/v1/tenants/{tenant}/revisions/{n}/impact`, each route
//! configuration and cluster the revision changed, with its rates and latency over a window before
//! and after the revision reached the proxies (their first acceptance of it; the commit time while
//! none accepted it yet).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use efms_domain::config::MAIN_BRANCH;
use efms_domain::telemetry::StatScope;
use efms_projections::impact::revision_reach;
use serde::{Deserialize, Serialize};

use super::{route_configuration, Point, Window};
use crate::access::{ReadConfig, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::read_replica::Reads;
use crate::state::AppState;

/// `{n}` of an impact route.
#[derive(Debug, Deserialize)]
pub struct RevisionPath {
    /// The revision; anything but a number is a revision that does not exist.
    n: String,
}

/// `?window=&group=` of an impact.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImpactParams {
    /// How long before and after, such as `5m` (default; 1s to 1h).
    window: Option<String>,
    /// Count only this group's proxies (default: every group of the tenant).
    group: Option<String>,
}

/// One changed resource, before and after.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeImpact {
    /// `route` or `cluster`.
    kind: String,
    name: String,
    /// `created`, `replaced` or `deleted`.
    change: String,
    /// Over the window before.
    before: Point,
    /// Over the window after (or as much of it as has passed).
    after: Point,
}

/// A revision's effect.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Impact {
    revision: i64,
    recorded_at: DateTime<Utc>,
    /// When a proxy first accepted it (`null`: none did yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    reached_at: Option<DateTime<Utc>>,
    /// Where before ends and after starts: the start of the statistics bucket the revision
    /// reached the proxies in.
    pivot: DateTime<Utc>,
    window_seconds: i64,
    /// How much of the window after has passed.
    after_seconds: i64,
    changes: Vec<ChangeImpact>,
    notes: Vec<String>,
}

/// `GET /api/v1/tenants/{tenant}/revisions/{n}/impact`: the changed route configurations' and
/// clusters' traffic before and after revision `n` reached the proxies.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/revisions/{n}/impact", tag = "metrics",
    params(("tenant" = String, Path, description = "Tenant slug"),
        ("n" = i64, Path, description = "The revision (main branch)"), ImpactParams),
    responses((status = 200, description = "Before and after", body = Impact),
        (status = 404, description = "No such revision", body = crate::problem::Problem),
        (status = 422, description = "Bad window or group", body = crate::problem::Problem)))]
pub async fn impact(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
    Path(path): Path<RevisionPath>,
    ApiQuery(params): ApiQuery<ImpactParams>,
    Reads(reads): Reads,
) -> Result<Json<Impact>, ApiError> {
    let mut errors = Vec::new();
    let window = crate::routes::fleet_health::duration_param(
        "window",
        params.window.as_deref(),
        300,
        &mut errors,
    );
    if let Some(Err(problem)) = params.group.as_deref().map(efms_domain::envoy::check_name) {
        errors.push(FieldError::parameter("group", problem));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let missing = || {
        ApiError::NotFound(format!(
            "there is no revision `{}`",
            path.n.escape_default()
        ))
    };
    let revision = path.n.parse::<i64>().map_err(|_| missing())?;
    let reach = revision_reach(&reads, tenant.tenant_id, MAIN_BRANCH, revision)
        .await?
        .ok_or_else(missing)?;
    // Statistics are stored in buckets stamped with their start: before ends where the bucket
    // holding the reach begins, so nothing served after it is counted before it.
    let pivot = bucket_start(
        reach.reached_at.unwrap_or(reach.recorded_at),
        state.xds.telemetry().map_or(10, |telemetry| {
            i64::try_from(telemetry.settings().bucket.as_secs()).unwrap_or(10)
        }),
    );
    let now = Utc::now();
    let after_seconds = (now - pivot).num_seconds().clamp(0, window);
    let span = Window {
        state: &state,
        tenant_id: tenant.tenant_id,
        group: params.group.as_deref(),
        from: pivot - TimeDelta::seconds(window),
        to: pivot + TimeDelta::seconds(window),
        step: window,
    };
    let mut notes = Vec::new();
    if reach.reached_at.is_none() {
        notes.push(
            "no proxy has accepted this revision yet: the commit time stands for it".to_owned(),
        );
    }
    if after_seconds < window {
        notes.push(format!(
            "the window after is still open: {after_seconds} s of {window} s have passed"
        ));
    }
    let mut changes = Vec::new();
    for (kind, name, change) in reach.changed {
        let points = if kind == "cluster" {
            let series = span
                .read(StatScope::Cluster, std::slice::from_ref(&name))
                .await?;
            span.points(series.first())
        } else if change == "deleted" {
            notes.push(format!(
                "route configuration `{name}` was deleted: its virtual hosts are not known any more"
            ));
            continue;
        } else {
            match route_configuration(&span, &name).await {
                Ok((points, _, _)) => points,
                Err(ApiError::NotFound(_)) => {
                    notes.push(format!(
                        "route configuration `{name}` is deleted now: its virtual hosts are not known any more"
                    ));
                    continue;
                }
                Err(error) => return Err(error),
            }
        };
        let mut points = points.into_iter();
        let (Some(before), Some(after)) = (points.next(), points.next()) else {
            continue;
        };
        changes.push(ChangeImpact {
            kind,
            name,
            change,
            before,
            after: after.over_seconds(after_seconds.max(1), window),
        });
    }
    Ok(Json(Impact {
        revision,
        recorded_at: reach.recorded_at,
        reached_at: reach.reached_at,
        pivot,
        window_seconds: window,
        after_seconds,
        changes,
        notes,
    }))
}

/// The start of the `bucket`-second bucket `at` falls in.
fn bucket_start(at: DateTime<Utc>, bucket: i64) -> DateTime<Utc> {
    let bucket = bucket.max(1);
    let seconds = at.timestamp().div_euclid(bucket) * bucket;
    DateTime::from_timestamp(seconds, 0).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pivot_is_the_start_of_the_bucket_the_reach_falls_in() {
        let at = DateTime::parse_from_rfc3339("2026-12-02T11:39:28.219Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            bucket_start(at, 10).to_rfc3339(),
            "2026-12-02T11:39:20+00:00"
        );
        assert_eq!(
            bucket_start(at, 1).to_rfc3339(),
            "2026-12-02T11:39:28+00:00"
        );
    }
}
