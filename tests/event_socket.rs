//! The event feed over a WebSocket and with tickets (DEV-AX-005, ADR 0014): a client sees each
//! commit once, in order, whether it authenticates with a header or (as a browser must) with the
//! subprotocol `bearer.<token>`; resuming from the last cursor yields exactly the events it
//! missed; a client that stops reading is cut with 4008 and its cursor; a ticket opens its own
//! tenant's streams only, and nothing else.

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

/// Opens the tenant's event WebSocket on a connection that carries little at a time (small
/// segments, a small receive buffer), so that the server's buffers for it fill after a few
/// hundred kilobytes when it does not read.
async fn connect_narrow(app: &TestApp, token: &str) -> Socket {
    let address: std::net::SocketAddr = app
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the test server listens on an address");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket2::SockRef::from(&socket).set_tcp_mss(536).unwrap();
    let stream = socket.connect(address).await.unwrap();
    let mut request = format!("{}{BASE}/events/ws", app.base.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    socket
}

/// How many event WebSockets the server has cut for being too slow, by its metrics.
async fn websockets_cut(app: &TestApp) -> u64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("efms_event_readers_cut_total{transport=\"websocket\"} ")
        })
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// One commit of 100 new clusters with long names: an event of about 25 KB.
async fn commit_a_hundred(app: &TestApp, round: usize) {
    let operations: Vec<Value> = (0..100)
        .map(|i| {
            let name = format!("{round:04}-{i:03}-{}", "x".repeat(200));
            json!({ "op": "create", "kind": "clusters", "resource": cluster(&name) })
        })
        .collect();
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": operations }),
        )
        .await;
    assert!(answer.status < 300, "{}", answer.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_client_that_stops_reading_is_cut_with_4008_and_its_cursor_and_resumes_from_it_exactly_once(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let token = app.token(Role::Viewer, Some("acme"));
    let mut slow = connect_narrow(&app, &token).await;
    // Commits until the server gives up on the client (its patience: 10 s without progress).
    let mut commits = 0;
    let mut waited = 0;
    while websockets_cut(&app).await == 0 {
        if commits < 200 {
            commit_a_hundred(&app, commits).await;
            commits += 1;
        } else {
            assert!(waited < 300, "the client was never cut");
            waited += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Reading again at once: what was queued for it, then the close with 4008 and the cursor of
    // the last event it was given.
    let mut seen = Vec::new();
    let close = loop {
        let message = tokio::time::timeout(PATIENCE, slow.next())
            .await
            .expect("the queued events and the close in time")
            .expect("the socket ends with a close frame")
            .unwrap();
        match message {
            Message::Text(text) => seen.push(serde_json::from_str::<Value>(&text).unwrap()),
            Message::Close(frame) => break frame.expect("a close frame with a code"),
            _ => {}
        }
    };
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    assert!(
        !seen.is_empty(),
        "some events were taken before the client stalled"
    );
    assert!(
        seen.len() < commits,
        "the client was cut before it had everything"
    );
    assert_eq!(
        close.reason.as_str(),
        seen.last().unwrap()["cursor"].as_str().unwrap(),
        "the close names the last event given"
    );
    let given = i64::try_from(seen.len()).unwrap();
    assert_eq!(revisions(&seen), (1..=given).collect::<Vec<_>>());

    // Resumed from that cursor: the rest, once each, in order.
    let mut resumed = connect(&app, Auth::Header(&token), Some(close.reason.as_str())).await;
    let rest = next_events(&mut resumed, commits - seen.len()).await;
    let all = i64::try_from(commits).unwrap();
    assert_eq!(revisions(&rest), (given + 1..=all).collect::<Vec<_>>());
    let nothing_more = tokio::time::timeout(Duration::from_millis(500), resumed.next()).await;
    assert!(nothing_more.is_err(), "no event twice: {nothing_more:?}");
}
