//! `GET /api/v1/tenants/{tenant}/events/stream`: the tenant's event feed live, as Server-Sent
//! Events (ADR 0014). Each event's SSE `id` is its cursor: a client that reconnects with
//! `Last-Event-ID` (or `?since=`) gets every later event exactly once, in order. A browser's
//! `EventSource`, which cannot send a header, opens it with `?ticket=` (`POST …/events/tickets`).
//!
//! [`follow`] is what every live form of the feed shares (this stream and the WebSocket of
//! `event_socket.rs`): it takes the events from the process's live tail of the tenant's feed
//! (`live_feed.rs`; the feed itself while it is further behind), and hands each to the client
//! with a deadline; a client too slow to take it within
//! [`PATIENCE`] is cut (it resumes from its last cursor), so no connection holds more than a small
//! buffer, whatever the client's speed.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use efms_domain::feed::FeedPosition;
use efms_projections::feed::read_feed;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::events::{resume_after, wanted_types, FeedEventView};
use crate::access::{ReadConfig, Tenant};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::live_feed::Taken;
use crate::state::AppState;

/// Events waiting for an SSE client before it counts as too slow.
const QUEUE: usize = 256;
/// How long a client may take to accept one event before it is cut.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);
/// Events taken from the live tail at a time.
const READ: usize = 100;
/// Events read from the feed at a time by a reader behind the tail.
const READ_BEHIND: i64 = 100;

/// `?since=&types=&ticket=` of a stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// The cursor of the last event read (`Last-Event-ID` wins; default: from the beginning).
    since: Option<String>,
    /// Only these types, comma-separated (default: every type).
    types: Option<String>,
    /// A ticket from `POST …/events/tickets`, instead of a bearer token.
    #[allow(dead_code)]
    ticket: Option<String>,
}

/// What became of an event handed to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// The client took it.
    Taken,
    /// The client is gone.
    Gone,
    /// The client did not take it within [`PATIENCE`].
    TooSlow,
    /// It is queued for the client, which did not take it within [`PATIENCE`]: it counts as
    /// handed on, and nothing more is.
    QueuedTooSlow,
}

/// Where a live reader of the feed stands, and what it hands on.
pub(crate) struct Follow {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The last event handed on (the client resumes after it).
    pub after: FeedPosition,
    /// The types handed on.
    pub types: Vec<&'static str>,
}

/// Hands each event after `follow.after` to `hand` until the client is gone or too slow, `gone`
/// resolves, or the process stops; answers why it ended and the last event handed on.
pub(crate) async fn follow<H, F>(
    state: AppState,
    mut follow: Follow,
    mut hand: H,
    gone: impl Future<Output = ()>,
) -> (Handed, FeedPosition)
where
    H: FnMut(FeedEventView, &'static str) -> F,
    F: Future<Output = Handed>,
{
    let seal = state.jwt.cursors().clone();
    let stopping = state.stopping.clone();
    tokio::pin!(stopping);
    tokio::pin!(gone);
    let tenant_id = follow.tenant_id;
    let (tail, mut changes) = match state
        .live_feed
        .tail(&state.pool, &state.doorbell, tenant_id)
        .await
    {
        Ok(tail) => tail,
        Err(error) => {
            tracing::warn!(%error, "a live event reader cannot start; it ends");
            return (Handed::Gone, follow.after);
        }
    };
    loop {
        changes.borrow_and_update();
        let events = match tail.after(follow.after, READ) {
            Taken::Events(events) => events,
            Taken::Behind => {
                match read_feed(&state.pool, tenant_id, follow.after, READ_BEHIND).await {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::warn!(%error, "a live event reader cannot read the feed; it ends");
                        return (Handed::Gone, follow.after);
                    }
                }
            }
        };
        let caught_up = events.is_empty();
        for event in events {
            let at = event.at;
            if follow.types.contains(&event.kind) {
                let kind = event.kind;
                let handed = hand(FeedEventView::of(&seal, tenant_id, event), kind).await;
                if handed == Handed::QueuedTooSlow {
                    return (Handed::TooSlow, at);
                }
                if handed != Handed::Taken {
                    return (handed, follow.after);
                }
            }
            follow.after = at;
        }
        if caught_up {
            tokio::select! {
                moved = changes.changed() => if moved.is_err() {
                    return (Handed::Gone, follow.after);
                },
                () = &mut gone => return (Handed::Gone, follow.after),
                () = &mut stopping => return (Handed::Gone, follow.after),
            }
        }
    }
}

/// `GET /api/v1/tenants/{tenant}/events/stream`: the events after the cursor, then each new one
/// as it is committed.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/events/stream", tag = "events",
    params(("tenant" = String, Path, description = "Tenant slug"), StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "The cursor to resume after")),
    responses((status = 200, description = "text/event-stream: `id` the cursor, `event` the type, `data` the event as the page route shows it", content_type = "text/event-stream", body = String),
        (status = 400, description = "A cursor not handed out for this tenant", body = crate::problem::Problem),
        (status = 410, description = "A cursor older than the feed's retention: events after it have aged out", body = crate::problem::Problem),
        (status = 422, description = "An unknown type", body = crate::problem::Problem)))]
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
    let types = wanted_types(params.types.as_deref())?;
    let tenant_id = tenant.tenant_id;
    let after = resume_after(&state, tenant_id, resume.as_deref()).await?;
    let (sender, receiver) = mpsc::channel(QUEUE);
    let reader = Follow {
        tenant_id,
        after,
        types,
    };
    tokio::spawn(async move {
        let closed = sender.clone();
        let hand = |view: FeedEventView, kind: &'static str| {
            let sender = sender.clone();
            async move {
                let event = Event::default()
                    .id(view.cursor.clone())
                    .event(kind)
                    .data(serde_json::to_string(&view).unwrap_or_default());
                match tokio::time::timeout(PATIENCE, sender.send(event)).await {
                    Ok(Ok(())) => Handed::Taken,
                    Ok(Err(_)) => Handed::Gone,
                    Err(_) => Handed::TooSlow,
                }
            }
        };
        let metrics = state.metrics.clone();
        let (ended, _) = follow(state, reader, hand, async move { closed.closed().await }).await;
        if ended == Handed::TooSlow {
            tracing::info!(%tenant_id, "an event stream's client is too slow: cut");
            metrics.event_reader_cut("sse");
        }
    });
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The stream's route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/tenants/{tenant}/events/stream",
        axum::routing::get(stream),
    )
}
