//! `GET /api/v1/tenants/{tenant}/events/stream`: the tenant's event feed live, as Server-Sent
//! Events (ADR 0014). Each event's SSE `id` is its cursor: a client that reconnects with
//! `Last-Event-ID` (or `?since=`) gets every later event exactly once, in order. The stream reads
//! the feed as the page route does, woken by the commit doorbell; a client too slow to take what
//! is waiting for it is cut (it resumes from its last id), so no stream holds more than a small
//! queue, whatever the client's speed.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use efms_domain::feed::{FeedPosition, EVENT_TYPES};
use efms_projections::feed::read_feed;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::events::{resume_after, FeedEventView};
use crate::access::{ReadConfig, Tenant};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

/// Events waiting for a client before it counts as too slow.
const QUEUE: usize = 256;
/// How long a full queue may stay full before the stream is cut.
const PATIENCE: Duration = Duration::from_secs(10);
/// Events read from the feed at a time.
const READ: i64 = 100;

/// `?since=` of a stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// The cursor of the last event read (`Last-Event-ID` wins; default: from the beginning).
    since: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/events/stream`: the events after the cursor, then each new one
/// as it is committed.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/events/stream", tag = "events",
    params(("tenant" = String, Path, description = "Tenant slug"), StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "The cursor to resume after")),
    responses((status = 200, description = "text/event-stream: `id` the cursor, `event` the type, `data` the event as the page route shows it", content_type = "text/event-stream", body = String),
        (status = 400, description = "A cursor not handed out for this tenant", body = crate::problem::Problem)))]
pub async fn stream(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<StreamParams>,
    headers: HeaderMap,
    tenant: Tenant<ReadConfig>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("\u{fffd}").to_owned())
        .or(params.since);
    let tenant_id = tenant.tenant_id;
    let after = resume_after(&state, tenant_id, resume.as_deref())?;
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(follow(state, tenant_id, after, sender));
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Reads the feed after `after` into `sender` until the client goes, is too slow, or the process
/// stops.
async fn follow(
    state: AppState,
    tenant_id: Uuid,
    mut after: FeedPosition,
    sender: mpsc::Sender<Event>,
) {
    let seal = state.jwt.cursors().clone();
    let mut doorbell = state.doorbell.clone();
    let stopping = state.stopping.clone();
    tokio::pin!(stopping);
    loop {
        let events = match read_feed(&state.pool, tenant_id, after, READ).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "the event stream cannot read the feed; it ends");
                return;
            }
        };
        let read_all = i64::try_from(events.len()).unwrap_or(i64::MAX) < READ;
        for event in events {
            after = event.at;
            if !EVENT_TYPES.contains(&event.kind) {
                continue;
            }
            let kind = event.kind;
            let view = FeedEventView::of(&seal, tenant_id, event);
            let sse = Event::default()
                .id(view.cursor.clone())
                .event(kind)
                .data(serde_json::to_string(&view).unwrap_or_default());
            match tokio::time::timeout(PATIENCE, sender.send(sse)).await {
                Ok(Ok(())) => {}
                // The client is gone.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(%tenant_id, "an event stream's client is too slow: cut");
                    return;
                }
            }
        }
        if read_all {
            tokio::select! {
                () = doorbell.wait_for("config") => {}
                () = sender.closed() => return,
                () = &mut stopping => return,
            }
        }
    }
}

/// The stream's route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/tenants/{tenant}/events/stream",
        axum::routing::get(stream),
    )
}
