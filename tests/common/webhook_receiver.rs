//! A webhook receiver: a real HTTP server on loopback that answers each request with the next
//! status of its script (then 200), and records what it received and when.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }
}

#[derive(Debug, Default)]
struct Shared {
    script: VecDeque<(u16, Vec<(String, String)>)>,
    received: Vec<Received>,
}

/// A running receiver; it stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// Its URL.
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    server: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, &'static str) {
    let mut shared = shared.lock().unwrap();
    let (status, extra) = shared.script.pop_front().unwrap_or((200, Vec::new()));
    shared.received.push(Received {
        at: Instant::now(),
        headers,
        body,
        answered: status,
    });
    let mut answer = HeaderMap::new();
    for (name, value) in extra {
        answer.insert(
            axum::http::HeaderName::try_from(name).unwrap(),
            value.parse().unwrap(),
        );
    }
    (StatusCode::from_u16(status).unwrap(), answer, "received")
}

impl Receiver {
    /// Starts a receiver at `http://127.0.0.1:PORT/hook`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            shared,
            server,
        }
    }

    /// Answers the next requests with `statuses`, in order (then 200 again).
    pub fn answer_with(&self, statuses: &[u16]) {
        let mut shared = self.shared.lock().unwrap();
        shared
            .script
            .extend(statuses.iter().map(|status| (*status, Vec::new())));
    }

    /// Answers the next request with `status` and `headers`.
    pub fn answer_once_with(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        self.shared
            .lock()
            .unwrap()
            .script
            .push_back((status, headers));
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A server that answers every request, whatever its method, with a redirect to one place.
pub struct Redirector {
    /// Its URL.
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Redirector {
    /// Starts one at `http://127.0.0.1:PORT/hook` answering `307` to `location`.
    pub async fn start(location: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let location = location.to_owned();
        let app = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, location)],
                )
            }
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, server }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
