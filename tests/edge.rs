//! What an unauthenticated client can make the server hold or do, against the real server over a
//! socket: the login throttle's bound and reservations, the audit trail's limits, the metrics'
//! labels, and the HTTP listener's timeouts and connection limit.

use std::time::Duration;

use efms_api::connections::HttpLimits;
use efms_api::routes::audit::{ANONYMOUS_PER_TENANT, MAX_REQUEST_ID};
use efms_domain::Role;
use efms_tests::TestApp;
use futures::StreamExt as _;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Long enough for anything the server does here; only a server that never answers reaches it.
const DEADLINE: Duration = Duration::from_secs(30);

async fn login(app: &TestApp, tenant: &str, username: &str, password: &str) -> u16 {
    app.client
        .post(app.url("/api/v1/auth/token"))
        .json(&json!({ "tenant": tenant, "username": username, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn trail(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/tenants/acme/audit?limit=500{query}")))
        .bearer_auth(app.token(Role::Auditor, Some("acme")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn logins_with_long_names_are_refused_unstored_and_the_throttle_stays_bounded(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let long_name = "a".repeat(100 * 1024);
    let statuses: Vec<u16> = futures::stream::iter(0..1000)
        .map(|n| {
            let (app, long_name) = (&app, &long_name);
            async move { login(app, &format!("missing{n}"), long_name, "guess guess").await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|status| *status == 422), "{statuses:?}");
    assert_eq!(app.login_throttle.entries(), 0, "nothing was stored");

    // Well-formed names against missing tenants: counted, but one address soon gets 429 and
    // nothing more is stored.
    let limits = app.login_throttle.limits();
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for n in 0..1000 {
        *answered
            .entry(
                login(
                    &app,
                    &format!("missing{n}"),
                    &format!("user{n}"),
                    "guess guess",
                )
                .await,
            )
            .or_default() += 1;
    }
    assert_eq!(
        answered,
        [(401, limits.per_address), (429, 1000 - limits.per_address)].into(),
        "the address's limit"
    );
    assert!(
        app.login_throttle.entries() <= limits.per_address + 1,
        "{} entries: one per name tried and one for the address",
        app.login_throttle.entries()
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn concurrent_wrong_guesses_cannot_pass_the_limit(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let created = app
        .client
        .post(app.url("/api/v1/tenants/acme/users"))
        .bearer_auth(app.token(Role::Admin, Some("acme")))
        .json(&json!({ "username": "bob", "role": "viewer", "password": "a long password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let guesses = (0..30).map(|n| {
        let app = &app;
        async move { login(app, "acme", "bob", &format!("wrong guess {n}")).await }
    });
    let statuses = futures::future::join_all(guesses).await;
    let verified = statuses.iter().filter(|status| **status == 401).count();
    let throttled = statuses.iter().filter(|status| **status == 429).count();
    assert!(
        verified <= 5,
        "{verified} guesses were checked: {statuses:?}"
    );
    assert_eq!(verified + throttled, 30, "{statuses:?}");
    assert_eq!(
        login(&app, "acme", "bob", "a long password").await,
        429,
        "the right password after them waits too"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_long_request_id_is_cut_in_the_trail(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let long_id = "r".repeat(100_007);
    let response = app
        .client
        .post(app.url("/api/v1/tenants/acme/clusters"))
        .header("x-request-id", &long_id)
        .json(&json!({ "name": "a", "type": "STATIC", "connect_timeout": "1s" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let rows = trail(&app, "&outcome=denied").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["request_id"].as_str().unwrap().len(),
        MAX_REQUEST_ID
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn anonymous_refusals_add_a_bounded_number_of_rows_to_a_tenants_trail(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let sent = 3 * ANONYMOUS_PER_TENANT;
    for _ in 0..sent {
        let response = app
            .client
            .delete(app.url("/api/v1/tenants/acme/clusters/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let rows = trail(&app, "&outcome=denied").await;
    assert_eq!(rows.len(), ANONYMOUS_PER_TENANT as usize);
    let text = app.metrics_text().await;
    let unrecorded = format!(
        "efms_audit_anonymous_refusals_unrecorded_total {}",
        sent - ANONYMOUS_PER_TENANT
    );
    assert!(text.contains(&unrecorded), "{text}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_percent_encoded_tenant_is_recorded_in_that_tenants_trail(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let response = app
        .client
        .post(app.url("/api/v1/tenants/%61cme/clusters"))
        .bearer_auth(app.token(Role::Admin, Some("acme")))
        .json(&json!({ "name": "encoded", "type": "STATIC", "connect_timeout": "1s" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "the write reaches acme");
    let rows = trail(&app, "&operation=POST").await;
    assert!(
        rows.iter()
            .any(|row| row["path"] == "/api/v1/tenants/%61cme/clusters" && row["status"] == 201),
        "{rows:?}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn made_up_methods_add_no_metrics_series(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for method in ["BREW", "WHEN", &"X".repeat(5000)] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
    }
    let text = app.metrics_text().await;
    assert!(!text.contains("BREW") && !text.contains("WHEN") && !text.contains("XXXX"));
    assert!(text.contains("method=\"other\""), "{text}");
}

/// Reads until the server closes the connection (or resets it); what it sent meanwhile.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0_u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    received
}

fn short(header_timeout: u64, idle_timeout: u64, max_connections: usize) -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(header_timeout),
        idle_timeout: Duration::from_secs(idle_timeout),
        max_connections,
    }
}

fn addr(app: &TestApp) -> std::net::SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_half_sent_request_header_is_dropped_after_the_header_timeout(pool: PgPool) {
    let app = TestApp::spawn_with_limits(pool, short(1, 600, 100), None).await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: efms\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_silent_connection_is_closed_after_the_idle_timeout(pool: PgPool) {
    let app = TestApp::spawn_with_limits(pool, short(600, 1, 100), None).await;
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    // Kept alive after an answer, then closed once silent for as long.
    let mut kept = TcpStream::connect(addr(&app)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: efms\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn connections_beyond_the_limit_are_not_served(pool: PgPool) {
    let app = TestApp::spawn_with_limits(pool, short(600, 600, 2), None).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: efms\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buffer = [0_u8; 1024];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = TcpStream::connect(addr(&app)).await.unwrap();
    // The server may close before the request is written: then writing fails.
    let _ = third.write_all(request).await;
    assert!(
        read_until_closed(&mut third).await.is_empty(),
        "no answer beyond the limit"
    );
    drop(held.pop());
    let served = tokio::time::timeout(DEADLINE, async {
        loop {
            let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
            let _ = stream.write_all(request).await;
            let mut buffer = [0_u8; 1024];
            if let Ok(n) = stream.read(&mut buffer).await {
                if buffer[..n].starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "a slot is free again once a connection ends"
    );
}
