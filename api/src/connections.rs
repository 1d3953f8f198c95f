//! Serving the HTTP API's connections, plain or TLS, within limits: a connection must send each
//! request's header within the header timeout, may stay silent between requests no longer than
//! the idle timeout (which also bounds the pauses within a request body), and the listener holds
//! at most so many connections; one more is closed at once (and counted in `/metrics`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tower::Service as _;

use crate::metrics::Metrics;

/// Where a request came from: the peer of its connection, plain or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The limits of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a request's first byte to the end of its header.
    pub header_timeout: Duration,
    /// The longest a connection may stay silent with no request being answered (a kept-alive
    /// connection between requests, a new one before its first byte), and the longest pause
    /// within a request body.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Serves `router` on the connections `listener` accepts, within `limits`, until `shutdown`
/// resolves; then waits for the requests in flight to be answered.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_seen) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            tracing::debug!(%peer, "refused a connection: the listener has its maximum");
            drop(io);
            continue;
        };
        let (router, closing) = (router.clone(), closing_seen.clone());
        tokio::spawn(async move {
            serve_connection(io, peer, router, limits, closing).await;
            drop(slot);
        });
    }
    closing.send_replace(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    // Every connection gives its slot back when it ends.
    let _ = slots.acquire_many(all).await;
    Ok(())
}

/// Serves one connection until it ends, a limit closes it, or the server shuts down (after the
/// requests in flight are answered).
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(peer)));
            let answering = Answering::start(activity.clone());
            let mut router = router.clone();
            let request = request
                .map(|body| tower_http::timeout::TimeoutBody::new(limits.idle_timeout, body));
            async move {
                let response = router.call(request).await;
                drop(answering);
                response
            }
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut connection = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::trace!(%peer, %error, "connection ended");
                }
                return;
            }
            () = activity.expired(limits) => {
                tracing::debug!(%peer, "closed a connection: header or idle timeout");
                return;
            }
            changed = closing.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What a connection is doing, for its timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests being answered.
    answering: usize,
    /// When a byte was last read or written, or the last answer was given.
    last_io: Instant,
    /// When the first byte of the next request's header arrived, while none is being answered.
    header_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                answering: 0,
                last_io: Instant::now(),
                header_started: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) {
        let mut state = self.state();
        state.last_io = Instant::now();
        if state.answering == 0 && state.header_started.is_none() {
            state.header_started = Some(state.last_io);
            drop(state);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.state().last_io = Instant::now();
    }

    /// When the connection is to be closed, if nothing happens before; `None` while a request is
    /// being answered.
    fn deadline(&self, limits: HttpLimits) -> Option<Instant> {
        let state = self.state();
        if state.answering > 0 {
            return None;
        }
        let idle = state.last_io + limits.idle_timeout;
        Some(
            state
                .header_started
                .map_or(idle, |started| idle.min(started + limits.header_timeout)),
        )
    }

    /// Resolves once the connection overstays its header or idle timeout.
    async fn expired(&self, limits: HttpLimits) {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        }
    }
}

/// A request being answered: its connection's timeouts wait until it is.
struct Answering(Arc<Activity>);

impl Answering {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut state = activity.state();
            state.answering += 1;
            state.header_started = None;
        }
        activity.changed.notify_one();
        Self(activity)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        {
            let mut state = self.0.state();
            state.answering -= 1;
            state.last_io = Instant::now();
            state.header_started = None;
        }
        self.0.changed.notify_one();
    }
}

/// A connection's byte stream, noting when bytes pass.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
