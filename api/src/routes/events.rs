//! `GET /api/v1/tenants/{tenant}/events?since=&types=&limit=`: the tenant's event feed, a page
//! at a time (ADR 0014). Each event carries its cursor; reading again from the page's `next`
//! yields every later event exactly once, in order. A cursor is sealed for its tenant: another
//! tenant's, or one never handed out, is refused.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::feed::{CursorSeal, FeedPosition, EVENT_TYPES};
use efms_projections::feed::{has_aged_out, is_ahead, read_feed, FeedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::access::{ReadConfig, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// `?since=&types=&limit=` of a feed read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// The cursor of the last event read (default: from the beginning).
    since: Option<String>,
    /// Only these types, comma-separated (default: every type): `commit`, `proxy.status`,
    /// `job.finished`, `vm.state`, `container.lifecycle`, `rollout.progress`.
    types: Option<String>,
    /// At most this many events, 1 to 500 (default 50).
    limit: Option<u32>,
}

/// One event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedEventView {
    /// Where it stands: read from here to get the events after it.
    pub(crate) cursor: String,
    /// `commit`, `proxy.status`, `job.finished`, `vm.state`, `container.lifecycle` or
    /// `rollout.progress`.
    #[serde(rename = "type")]
    kind: String,
    /// When it happened.
    time: DateTime<Utc>,
    /// What happened (README, "Events"): for `commit`, `branch`, `revision`, `actor`,
    /// `operation`, `message`, `merged`, `changes` (at most 100: `kind`, `name`, `change`) and
    /// `changes_total`; for `proxy.status`, `node_id`, `type_url`, `outcome` (`nacked`, or
    /// `acked` after a refusal), `version`, `revision`, `error` (Envoy's words); for
    /// `job.finished`, `job_id`, `kind` (`bulk` or `container_operation`) and its outcome; for
    /// `vm.state`, `vm`, `from`, `to`, `reason`; for `container.lifecycle`, `vm`,
    /// `container_id`, `action` and its details; for `rollout.progress`, `rollout`, `step`,
    /// `details`.
    #[schema(value_type = Object)]
    payload: Value,
}

impl FeedEventView {
    /// How `event` of `tenant_id`'s feed is shown, its cursor sealed with `seal`.
    pub(crate) fn of(seal: &CursorSeal, tenant_id: Uuid, event: FeedEvent) -> Self {
        Self {
            cursor: seal.seal(tenant_id, event.at),
            kind: event.kind.to_owned(),
            time: event.time,
            payload: event.payload,
        }
    }
}

/// Where a read resumes: after `cursor` (a 400 naming `since` when it was not handed out for
/// `tenant_id`, or lies ahead of the feed; a 410 when events after it have aged out), or from
/// the beginning.
pub(crate) async fn resume_after(
    state: &AppState,
    tenant_id: Uuid,
    cursor: Option<&str>,
) -> Result<FeedPosition, ApiError> {
    let Some(cursor) = cursor else {
        return Ok(FeedPosition::START);
    };
    let refused = |problem: String| ApiError::BadRequest {
        detail: format!("the cursor `since` {problem}"),
        errors: vec![FieldError::parameter("since", problem)],
    };
    let at = state
        .jwt
        .cursors()
        .open(tenant_id, cursor)
        .map_err(|problem| refused(problem.to_string()))?;
    if is_ahead(&state.pool, at).await? {
        return Err(refused(
            "lies ahead of the feed: it was not handed out by this database".to_owned(),
        ));
    }
    if has_aged_out(&state.pool, tenant_id, at).await? {
        let problem = "is older than the feed's retention: events after it have aged out; read \
                       again from the beginning (without `since`)";
        return Err(ApiError::Gone {
            detail: format!("the cursor `since` {problem}"),
            errors: vec![FieldError::parameter("since", problem)],
        });
    }
    Ok(at)
}

/// The event types `types` (comma-separated) names, every type without it; a 422 naming
/// `types` when one is unknown.
pub(crate) fn wanted_types(types: Option<&str>) -> Result<Vec<&'static str>, ApiError> {
    let Some(types) = types else {
        return Ok(EVENT_TYPES.to_vec());
    };
    types
        .split(',')
        .map(str::trim)
        .map(|named| {
            EVENT_TYPES
                .iter()
                .find(|known| **known == named)
                .copied()
                .ok_or_else(|| {
                    ApiError::Validation(vec![FieldError::parameter(
                        "types",
                        format!(
                            "`{}` is not an event type; the types are {}",
                            named.escape_default(),
                            EVENT_TYPES.join(", ")
                        ),
                    )])
                })
        })
        .collect()
}

/// A page of the feed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    items: Vec<FeedEventView>,
    /// Where to read on from: the last event read's cursor, or `since` again when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/events`: the events after `since`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = "Tenant slug"), EventsParams),
    responses((status = 200, description = "The events after the cursor", body = EventsPage),
        (status = 400, description = "A cursor not handed out for this tenant", body = crate::problem::Problem),
        (status = 410, description = "A cursor older than the feed's retention: events after it have aged out", body = crate::problem::Problem),
        (status = 422, description = "Unknown type or bad limit", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<EventsParams>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<EventsPage>, ApiError> {
    let page = super::PageSize::from_param(params.limit)?;
    let wanted = wanted_types(params.types.as_deref())?;
    let seal = state.jwt.cursors();
    let after = resume_after(&state, tenant.tenant_id, params.since.as_deref()).await?;
    let events = read_feed(&state.pool, tenant.tenant_id, after, page.size()).await?;
    // The page goes on from the last event read, whether its type was asked for or not.
    let next = events
        .last()
        .map(|event| seal.seal(tenant.tenant_id, event.at))
        .or(params.since);
    let items: Vec<FeedEventView> = events
        .into_iter()
        .filter(|event| wanted.contains(&event.kind))
        .map(|event| FeedEventView::of(seal, tenant.tenant_id, event))
        .collect();
    Ok(Json(EventsPage { items, next }))
}

/// The feed's routes.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/tenants/{tenant}/events", axum::routing::get(list))
}
