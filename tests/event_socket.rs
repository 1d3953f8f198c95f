//! The event feed over a WebSocket and with tickets (DEV-AX-005, ADR 0014): a client sees each
//! commit once, in order, whether it authenticates with a header or (as a browser must) with the
//! subprotocol `bearer.<token>`; resuming from the last cursor yields exactly the events it
//! missed; a ticket opens its own tenant's streams only, and nothing else.

use std::time::Duration;

use efms_domain::Role;
use efms_tests::TestApp;
use futures::StreamExt as _;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const BASE: &str = "/api/v1/tenants/acme";
const PATIENCE: Duration = Duration::from_secs(30);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] } })
}

async fn commit(app: &TestApp, name: &str) {
    let answer = app
        .put(&format!("{BASE}/clusters/{name}"), &cluster(name), &[])
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
}

/// How a client proves who it is.
enum Auth<'a> {
    Header(&'a str),
    Subprotocol(&'a str),
}

/// Opens the tenant's event WebSocket after `since`.
async fn connect(app: &TestApp, auth: Auth<'_>, since: Option<&str>) -> Socket {
    let url = format!(
        "{}{BASE}/events/ws{}",
        app.base.replacen("http", "ws", 1),
        since.map_or_else(String::new, |since| format!("?since={since}"))
    );
    let mut request = url.into_client_request().unwrap();
    let offered = matches!(auth, Auth::Subprotocol(_));
    match auth {
        Auth::Header(token) => {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Auth::Subprotocol(token) => {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                format!("efms.events.v1, bearer.{token}").parse().unwrap(),
            );
        }
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    if offered {
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "efms.events.v1",
            "the server answers with its protocol, never with the token"
        );
    }
    socket
}

/// The next `count` events on `socket`.
async fn next_events(socket: &mut Socket, count: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < count {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("an event in time")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = message {
            events.push(serde_json::from_str(&text).unwrap());
        }
    }
    events
}

fn revisions(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|event| event["payload"]["revision"].as_i64().unwrap())
        .collect()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_websocket_client_sees_each_commit_and_resumes_from_its_cursor_exactly_once(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let token = app.token(Role::Viewer, Some("acme"));
    let mut by_header = connect(&app, Auth::Header(&token), None).await;
    let mut by_protocol = connect(&app, Auth::Subprotocol(&token), None).await;
    for name in ["a", "b", "c"] {
        commit(&app, name).await;
    }
    let seen = next_events(&mut by_header, 3).await;
    assert_eq!(revisions(&seen), [1, 2, 3]);
    assert_eq!(seen[0]["type"], "commit");
    assert_eq!(
        revisions(&next_events(&mut by_protocol, 3).await),
        [1, 2, 3]
    );
    by_header.close(None).await.unwrap();

    // Missed while away: exactly those, from the last cursor seen.
    for name in ["d", "e"] {
        commit(&app, name).await;
    }
    let last = seen[2]["cursor"].as_str().unwrap();
    let mut resumed = connect(&app, Auth::Header(&token), Some(last)).await;
    assert_eq!(revisions(&next_events(&mut resumed, 2).await), [4, 5]);
    commit(&app, "f").await;
    assert_eq!(revisions(&next_events(&mut resumed, 1).await), [6]);
    let nothing_more = tokio::time::timeout(Duration::from_millis(500), resumed.next()).await;
    assert!(nothing_more.is_err(), "no event twice: {nothing_more:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_websocket_without_a_token_or_with_a_bad_cursor_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let url = format!("{}{BASE}/events/ws", app.base.replacen("http", "ws", 1));
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("refused with 401, not {other:?}"),
    }
    let bad = app.get(&format!("{BASE}/events/ws?since=nonsense")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let not_a_socket = app.get(&format!("{BASE}/events/ws")).await;
    assert_eq!(not_a_socket.status, 400, "{}", not_a_socket.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_ticket_opens_its_tenants_event_stream_only_and_is_no_bearer_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("umbrella", "Umbrella").await;
    let issued = app
        .client
        .post(app.url(&format!("{BASE}/events/tickets")))
        .bearer_auth(app.token(Role::Viewer, Some("acme")))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let ticket = issued.json::<Value>().await.unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    commit(&app, "a").await;
    let mut stream = app
        .client
        .get(app.url(&format!("{BASE}/events/stream?ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(PATIENCE, stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("event: commit"),
        "{first:?}"
    );
    for path in [
        "/api/v1/tenants/umbrella/events/stream".to_owned(),
        format!("{BASE}/events"),
        format!("{BASE}/clusters"),
    ] {
        let refused = app
            .client
            .get(app.url(&format!("{path}?ticket={ticket}")))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        let as_bearer = app
            .client
            .get(app.url(&path))
            .bearer_auth(&ticket)
            .send()
            .await
            .unwrap();
        assert_eq!(
            as_bearer.status(),
            401,
            "{path} with the ticket as a bearer token"
        );
    }
}
