//! How a group, or a tenant's whole fleet, is doing (FR-CL-005): its proxies by drift state, its
//! containers and VMs, its upstream endpoints as the proxies' health checks see them, the 5xx
//! ratio and p99 of its traffic, and an overall `healthy`, `degraded` or `critical` with every
//! reason that made it so.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::{TimeDelta, Utc};
use efms_domain::envoy::ResourceKind;
use efms_domain::fleet::{ContainerState, Health as ContainerHealth};
use efms_domain::telemetry::{StatScope, StatValues};
use efms_projections::drift::{drift, DriftState};
use efms_projections::fleet::queries::{self as fleet, ContainerFilter};
use efms_projections::proxies::{self as status, TypeStatusRow};
use efms_projections::telemetry::{series, SeriesQuery};
use serde::{Deserialize, Serialize};

use super::resources::ResourcePath;
use crate::access::{ReadConfig, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// A 5xx ratio above this makes the traffic `degraded`.
const ERROR_RATIO_DEGRADED: f64 = 0.05;
/// A 5xx ratio above this makes it `critical`.
const ERROR_RATIO_CRITICAL: f64 = 0.5;
/// The most proxies or containers one health read looks at.
const MOST: i64 = 10_000;
/// How far back the latest endpoint counts are looked for.
const GAUGE_LOOKBACK: i64 = 60;

/// `?window=&behind_after=` of a health read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HealthParams {
    /// Over how long the traffic is judged, such as `5m` (default; 10s to 1h).
    window: Option<String>,
    /// How long a proxy may take to accept what it was sent before it is `BEHIND`, such as
    /// `10s` (default; 1s to 1h).
    behind_after: Option<String>,
}

/// One reason of a health verdict.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reason {
    /// `degraded` or `critical`.
    severity: &'static str,
    /// What it is about: `proxy/<node>`, `cluster/<name>`, `container/<id>`, `vm/<name>`,
    /// `traffic`.
    subject: String,
    /// What is wrong.
    message: String,
}

/// Proxies by drift state.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ProxyCounts {
    total: usize,
    connected: usize,
    in_sync: usize,
    behind: usize,
    nacked: usize,
    /// Holding another configuration than they accepted (their `config_dump`).
    diverged: usize,
    disconnected: usize,
}

/// Healthy of all.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Share {
    healthy: i64,
    total: i64,
}

/// The traffic over the window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Traffic {
    window_seconds: i64,
    requests: i64,
    /// 5xx of all responses (`null` without responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    error_ratio: Option<f64>,
    /// The 99th percentile of request latency in ms (`null` without timed requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
}

/// A health verdict.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `healthy`, `degraded` or `critical`.
    status: &'static str,
    /// Why it is not healthy.
    reasons: Vec<Reason>,
    proxies: ProxyCounts,
    /// Containers running the proxies (as the agents report them): running and healthy (or
    /// without a health check) of all.
    containers: Share,
    /// The VMs of those containers: ready of all.
    vms: Share,
    /// Upstream endpoints healthy of all, summed over the proxies that see them (latest report).
    endpoints: Share,
    traffic: Traffic,
}

/// A duration parameter of 1 s to 1 h in seconds, `default` when absent; a bad one is added to
/// `errors`.
pub(crate) fn duration_param(
    name: &'static str,
    text: Option<&str>,
    default: i64,
    errors: &mut Vec<FieldError>,
) -> i64 {
    let Some(text) = text else {
        return default;
    };
    match crate::ttl::parse_ttl(text) {
        Ok(value) if (1..=3_600).contains(&value.as_secs()) => {
            i64::try_from(value.as_secs()).unwrap_or(default)
        }
        Ok(_) => {
            errors.push(FieldError::parameter(
                name,
                format!("`{text}` is outside 1s to 1h"),
            ));
            default
        }
        Err(problem) => {
            errors.push(FieldError::parameter(name, problem));
            default
        }
    }
}

/// `GET /api/v1/tenants/{tenant}/groups/{group}/health`: how the group is doing.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}/health", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "groups"),
        ("name" = String, Path, description = "The group's name"), HealthParams),
    responses((status = 200, description = "The group's health", body = Health),
        (status = 404, description = "No such group", body = crate::problem::Problem),
        (status = 422, description = "Bad window", body = crate::problem::Problem)))]
pub async fn group_health(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(params): ApiQuery<HealthParams>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<Health>, ApiError> {
    if kind != ResourceKind::Group {
        return Err(ApiError::NotFound(format!(
            "only groups have a health, not {}",
            kind.collection()
        )));
    }
    let (window, behind_after) = read_params(&params)?;
    super::proxies::existing_group(&state.pool, tenant.tenant_id, &name).await?;
    Ok(Json(
        assess(&state, tenant.tenant_id, Some(&name), window, behind_after).await?,
    ))
}

/// `GET /api/v1/tenants/{tenant}/health`: how the tenant's whole fleet is doing.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/health", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), HealthParams),
    responses((status = 200, description = "The fleet's health", body = Health),
        (status = 422, description = "Bad window", body = crate::problem::Problem)))]
pub async fn fleet_health(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HealthParams>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<Health>, ApiError> {
    let (window, behind_after) = read_params(&params)?;
    Ok(Json(
        assess(&state, tenant.tenant_id, None, window, behind_after).await?,
    ))
}

fn read_params(params: &HealthParams) -> Result<(i64, i64), ApiError> {
    let mut errors = Vec::new();
    let window = duration_param("window", params.window.as_deref(), 300, &mut errors);
    let behind = duration_param(
        "behind_after",
        params.behind_after.as_deref(),
        10,
        &mut errors,
    );
    if errors.is_empty() {
        Ok((window, behind))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// The verdict being made.
#[derive(Default)]
struct Verdict {
    reasons: Vec<Reason>,
}

impl Verdict {
    fn degraded(&mut self, subject: String, message: String) {
        self.reasons.push(Reason {
            severity: "degraded",
            subject,
            message,
        });
    }

    fn critical(&mut self, subject: String, message: String) {
        self.reasons.push(Reason {
            severity: "critical",
            subject,
            message,
        });
    }

    fn status(&self) -> &'static str {
        if self.reasons.iter().any(|r| r.severity == "critical") {
            "critical"
        } else if self.reasons.is_empty() {
            "healthy"
        } else {
            "degraded"
        }
    }
}

async fn assess(
    state: &AppState,
    tenant_id: uuid::Uuid,
    group: Option<&str>,
    window: i64,
    behind_after: i64,
) -> Result<Health, ApiError> {
    let mut verdict = Verdict::default();
    let proxies = proxies(state, tenant_id, group, behind_after, &mut verdict).await?;
    let (containers, vms) = containers(state, tenant_id, group, &mut verdict).await?;
    let now = Utc::now();
    let query = |scope, from, step| SeriesQuery {
        tenant_id,
        group,
        scope,
        names: None,
        from,
        to: now + TimeDelta::seconds(1),
        step,
    };
    let lookback = now - TimeDelta::seconds(GAUGE_LOOKBACK);
    let clusters = series(&state.pool, &query(StatScope::Cluster, lookback, 1)).await?;
    let mut endpoints = Share::default();
    for cluster in &clusters {
        let latest = cluster
            .points
            .iter()
            .rev()
            .find_map(|(_, values)| Some((values.endpoints_healthy?, values.endpoints_total?)));
        if let Some((healthy, total)) = latest {
            endpoints.healthy += healthy;
            endpoints.total += total;
            let message = format!(
                "{healthy} of {total} endpoints healthy (summed over the proxies that see them)"
            );
            if total > 0 && healthy == 0 {
                verdict.critical(format!("cluster/{}", cluster.name), message);
            } else if healthy < total {
                verdict.degraded(format!("cluster/{}", cluster.name), message);
            }
        }
    }
    let from = now - TimeDelta::seconds(window);
    let http = series(&state.pool, &query(StatScope::Http, from, window + 1)).await?;
    let traffic = StatValues::over_time(
        http.iter()
            .flat_map(|series| series.points.iter().map(|(_, values)| values)),
    );
    let answered: i64 = traffic.responses.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    let error_ratio = (answered > 0).then(|| traffic.responses[3] as f64 / answered as f64);
    if let Some(ratio) = error_ratio {
        let message = format!(
            "{:.1} % of {answered} responses were 5xx over the last {window} s",
            ratio * 100.0
        );
        if ratio > ERROR_RATIO_CRITICAL {
            verdict.critical("traffic".to_owned(), message);
        } else if ratio > ERROR_RATIO_DEGRADED {
            verdict.degraded("traffic".to_owned(), message);
        }
    }
    Ok(Health {
        status: verdict.status(),
        reasons: verdict.reasons,
        proxies,
        containers,
        vms,
        endpoints,
        traffic: Traffic {
            window_seconds: window,
            requests: traffic.requests,
            error_ratio,
            p99_ms: traffic.latency.quantile(0.99),
        },
    })
}

/// The proxies by drift state, with a reason for each one not in sync.
async fn proxies(
    state: &AppState,
    tenant_id: uuid::Uuid,
    group: Option<&str>,
    behind_after: i64,
    verdict: &mut Verdict,
) -> Result<ProxyCounts, ApiError> {
    let rows = status::list_proxies(&state.pool, tenant_id, group, None, MOST).await?;
    let ids: Vec<String> = rows.iter().map(|row| row.node_id.clone()).collect();
    let mut types: BTreeMap<String, Vec<TypeStatusRow>> = BTreeMap::new();
    for (node, row) in status::type_statuses(&state.pool, tenant_id, &ids).await? {
        types.entry(node).or_default().push(row);
    }
    let now = Utc::now();
    let mut counts = ProxyCounts {
        total: rows.len(),
        ..ProxyCounts::default()
    };
    for row in &rows {
        let node_types = types.get(&row.node_id).map_or(&[][..], Vec::as_slice);
        let drift = drift(row, node_types, now, TimeDelta::seconds(behind_after));
        let subject = format!("proxy/{}", row.node_id);
        let why = drift.why.unwrap_or_default();
        match drift.state {
            DriftState::InSync => counts.in_sync += 1,
            DriftState::Behind => {
                counts.behind += 1;
                verdict.degraded(subject, why);
            }
            DriftState::Nacked => {
                counts.nacked += 1;
                verdict.degraded(subject, why);
            }
            DriftState::Diverged => {
                counts.diverged += 1;
                verdict.degraded(subject, why);
            }
            DriftState::Disconnected => counts.disconnected += 1,
        }
    }
    counts.connected = counts.total - counts.disconnected;
    if counts.total > 0 && counts.connected == 0 {
        verdict.critical(
            "proxies".to_owned(),
            format!("none of the {} proxies is connected", counts.total),
        );
    } else if counts.disconnected > 0 {
        verdict.degraded(
            "proxies".to_owned(),
            format!(
                "{} of the {} proxies are not connected",
                counts.disconnected, counts.total
            ),
        );
    }
    Ok(counts)
}

/// The containers of the proxies (of the group) and their VMs, with a reason for each one that is
/// not running and healthy.
async fn containers(
    state: &AppState,
    tenant_id: uuid::Uuid,
    group: Option<&str>,
    verdict: &mut Verdict,
) -> Result<(Share, Share), ApiError> {
    let filter = ContainerFilter {
        group: group.map(str::to_owned),
        live_only: true,
        limit: MOST,
        ..ContainerFilter::default()
    };
    let rows = fleet::list_containers(&state.pool, tenant_id, &filter).await?;
    let mut containers = Share::default();
    let mut vm_names: Vec<String> = Vec::new();
    for row in &rows {
        containers.total += 1;
        let container = &row.container;
        let well = container.state == ContainerState::Running
            && container.health != ContainerHealth::Unhealthy;
        if well {
            containers.healthy += 1;
        } else {
            verdict.degraded(
                format!("container/{}", container.name),
                format!(
                    "on VM `{}`: {}{}",
                    row.vm,
                    container.state.as_str(),
                    if container.health == ContainerHealth::Unhealthy {
                        ", unhealthy"
                    } else {
                        ""
                    }
                ),
            );
        }
        if !vm_names.contains(&row.vm) {
            vm_names.push(row.vm.clone());
        }
    }
    let mut vms = Share::default();
    for vm in fleet::list_vms(
        &state.pool,
        tenant_id,
        &fleet::VmFilter {
            limit: MOST,
            ..fleet::VmFilter::default()
        },
    )
    .await?
    .into_iter()
    .filter(|vm| group.is_none() || vm_names.contains(&vm.name))
    {
        vms.total += 1;
        if vm.state == "ready" {
            vms.healthy += 1;
        } else if vm.state != "removed" {
            verdict.degraded(format!("vm/{}", vm.name), format!("VM is {}", vm.state));
        }
    }
    Ok((containers, vms))
}

/// The health routes.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/tenants/{tenant}/{kind}/{name}/health",
            axum::routing::get(group_health),
        )
        .route("/tenants/{tenant}/health", axum::routing::get(fleet_health))
}
