//! `GET /api/v1/tenants/{tenant}/events/ws?since=&types=`: the tenant's event feed live over a
//! WebSocket (DEV-AX-005, ADR 0014). Each event is one text message, the event as the page route
//! shows it (its `cursor` among it). A browser, which cannot set headers on a WebSocket, offers
//! its token as the subprotocol `bearer.<token>` beside `efms.events.v1` (or opens it with
//! `?ticket=`); the server answers with `efms.events.v1`.
//!
//! A client too slow to take an event within the patience of [`super::event_stream::PATIENCE`]
//! is cut with the close code [`TOO_SLOW`] and, as the close reason, the cursor of the last event
//! it took, so that it resumes exactly there; the server stopping closes with 1001 and the cursor
//! too.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;

use super::event_stream::{follow, Follow, Handed, PATIENCE};
use super::events::{resume_after, wanted_types, FeedEventView};
use crate::access::{ReadConfig, Tenant};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

/// The subprotocol the server speaks.
pub const SUBPROTOCOL: &str = "efms.events.v1";
/// The close code of a client cut for being too slow.
pub const TOO_SLOW: u16 = 4008;
/// The most a socket buffers for a client before a send waits for it.
const WRITE_BUFFER: usize = 64 * 1024;
/// The largest message a client may send (it has nothing to say but close).
const MAX_INCOMING: usize = 4 * 1024;

/// `?since=&types=&ticket=` of a WebSocket.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SocketParams {
    /// The cursor of the last event read (default: from the beginning).
    since: Option<String>,
    /// Only these types, comma-separated (default: every type).
    types: Option<String>,
    /// A ticket from `POST …/events/tickets`, instead of a bearer token.
    #[allow(dead_code)]
    ticket: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/events/ws`: the events after the cursor, then each new one as
/// it is committed, one text message each.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/events/ws", tag = "events",
    params(("tenant" = String, Path, description = "Tenant slug"), SocketParams),
    responses((status = 101, description = "A WebSocket: each message an event as the page route shows it; closed with 4008 and the last cursor when the client is too slow"),
        (status = 400, description = "A cursor not handed out for this tenant, or not a WebSocket request", body = crate::problem::Problem),
        (status = 410, description = "A cursor older than the feed's retention: events after it have aged out", body = crate::problem::Problem),
        (status = 422, description = "An unknown type", body = crate::problem::Problem)))]
pub async fn socket(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SocketParams>,
    tenant: Tenant<ReadConfig>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let types = wanted_types(params.types.as_deref())?;
    let tenant_id = tenant.tenant_id;
    let after = resume_after(&state, tenant_id, params.since.as_deref()).await?;
    let upgrade = upgrade.map_err(|rejection| ApiError::BadRequest {
        detail: format!("this route speaks WebSocket only: {rejection}"),
        errors: Vec::new(),
    })?;
    let reader = Follow {
        tenant_id,
        after,
        types,
    };
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER * 4)
        .max_message_size(MAX_INCOMING)
        .on_upgrade(move |socket| serve(state, reader, socket)))
}

/// Sends the feed on `socket` until the client goes, is too slow, or the process stops.
async fn serve(state: AppState, reader: Follow, socket: WebSocket) {
    let tenant_id = reader.tenant_id;
    let seal = state.jwt.cursors().clone();
    let metrics = state.metrics.clone();
    let (sink, mut incoming) = socket.split();
    let sink = std::sync::Arc::new(tokio::sync::Mutex::new(sink));
    // The client says nothing but close; pings are answered by the socket itself.
    let gone = async move {
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let hand = |view: FeedEventView, _kind: &'static str| {
        let sink = sink.clone();
        async move {
            let text = serde_json::to_string(&view).unwrap_or_default();
            let mut sink = sink.lock().await;
            // Queued first, then flushed: a message queued when patience runs out still goes
            // before the close, so the close's cursor names it.
            match tokio::time::timeout(PATIENCE, sink.feed(Message::Text(text.into()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Handed::Gone,
                Err(_) => return Handed::TooSlow,
            }
            match tokio::time::timeout(PATIENCE, sink.flush()).await {
                Ok(Ok(())) => Handed::Taken,
                Ok(Err(_)) => Handed::Gone,
                Err(_) => Handed::QueuedTooSlow,
            }
        }
    };
    let (ended, last) = follow(state, reader, hand, gone).await;
    let (code, why) = match ended {
        Handed::TooSlow => {
            tracing::info!(%tenant_id, "an event WebSocket's client is too slow: cut");
            metrics.event_reader_cut("websocket");
            (TOO_SLOW, "too slow")
        }
        Handed::Gone | Handed::Taken | Handed::QueuedTooSlow => (1001, "going away"),
    };
    let cursor = seal.seal(tenant_id, last);
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: if last == efms_domain::feed::FeedPosition::START {
            why.into()
        } else {
            cursor.into()
        },
    }));
    // A slow client that reads again within the patience gets what was queued, then the close;
    // one that does not is dropped with its buffers. Others get a second (a stopping process
    // waits for no one).
    let wait = if code == TOO_SLOW {
        PATIENCE
    } else {
        std::time::Duration::from_secs(1)
    };
    let mut sink = sink.lock().await;
    let _ = tokio::time::timeout(wait, sink.send(close)).await;
}

/// The WebSocket's route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/tenants/{tenant}/events/ws", axum::routing::get(socket))
}
