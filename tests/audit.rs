//! The API's audit trail against a real Postgres: every write and every refused request, with who,
//! what, when, from where and how it ended, readable by auditors and admins only (NFR-SE-005).

use efms_domain::Role;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

async fn send(
    app: &TestApp,
    token: Option<String>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> u16 {
    let mut request = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .header("x-request-id", format!("req-{method}-{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    request.send().await.unwrap().status().as_u16()
}

async fn trail(app: &TestApp, role: Role, query: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(&format!("{BASE}/audit{query}")))
        .bearer_auth(app.token(role, Some("acme")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn writes_and_refusals_are_recorded_and_only_auditors_and_admins_read_them(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("globex", "Globex").await;
    let cluster = json!({ "name": "a", "type": "STATIC", "connect_timeout": "1s" });
    let operator = Some(app.token(Role::Operator, Some("acme")));
    let viewer = Some(app.token(Role::Viewer, Some("acme")));
    let stranger = Some(app.token(Role::Admin, Some("globex")));
    assert_eq!(
        send(
            &app,
            operator.clone(),
            "POST",
            &format!("{BASE}/clusters"),
            Some(cluster.clone())
        )
        .await,
        201
    );
    assert_eq!(
        send(
            &app,
            viewer.clone(),
            "DELETE",
            &format!("{BASE}/clusters/a"),
            None
        )
        .await,
        403
    );
    assert_eq!(
        send(&app, None, "GET", &format!("{BASE}/clusters"), None).await,
        401
    );
    assert_eq!(
        send(
            &app,
            stranger,
            "PUT",
            &format!("{BASE}/clusters/a"),
            Some(cluster)
        )
        .await,
        404
    );
    // Reads that succeed are not recorded.
    assert_eq!(
        send(
            &app,
            viewer.clone(),
            "GET",
            &format!("{BASE}/clusters"),
            None
        )
        .await,
        200
    );

    let (status, page) = trail(&app, Role::Auditor, "").await;
    assert_eq!(status, 200, "{page}");
    let entries: Vec<(String, String, String, i64, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"].as_str().unwrap().contains("/clusters"))
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["operation"].as_str().unwrap().to_owned(),
                e["route"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let route = "/api/v1/tenants/{tenant}/{kind}";
    let named = "/api/v1/tenants/{tenant}/{kind}/{name}";
    assert_eq!(
        entries,
        [
            (
                "tester (admin)".into(),
                "PUT".into(),
                named.into(),
                404,
                "failed".into()
            ),
            (
                "anonymous".into(),
                "GET".into(),
                route.into(),
                401,
                "denied".into()
            ),
            (
                "tester (viewer)".into(),
                "DELETE".into(),
                named.into(),
                403,
                "denied".into()
            ),
            (
                "tester (operator)".into(),
                "POST".into(),
                route.into(),
                201,
                "succeeded".into()
            ),
        ]
    );
    let first = &page["items"].as_array().unwrap().last().unwrap();
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["request_id"].as_str().unwrap().starts_with("req-"));

    let (_, denied) = trail(&app, Role::Admin, "?outcome=denied").await;
    assert_eq!(denied["items"].as_array().unwrap().len(), 2, "{denied}");
    let (_, by_actor) = trail(
        &app,
        Role::Admin,
        "?actor=tester%20(operator)&operation=post",
    )
    .await;
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 1, "{by_actor}");
    for role in [Role::Viewer, Role::Operator] {
        assert_eq!(trail(&app, role, "").await.0, 403, "{role}");
    }
    // Globex's auditors do not see what happened in acme.
    let theirs = app
        .client
        .get(app.url("/api/v1/tenants/globex/audit"))
        .bearer_auth(app.token(Role::Auditor, Some("globex")))
        .send()
        .await
        .unwrap();
    let theirs: Value = theirs.json().await.unwrap();
    assert!(
        theirs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["path"].as_str().unwrap().contains("/acme/")),
        "{theirs}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_request_without_an_id_gets_one_that_its_answer_audit_row_and_commit_carry(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let created = app
        .post(
            &format!("{BASE}/clusters"),
            &json!({ "name": "a", "type": "STATIC", "connect_timeout": "1s" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.header("x-request-id").to_owned();
    let generated = uuid::Uuid::parse_str(&id).expect("a generated id is a UUID");
    assert_eq!(generated.get_version_num(), 7);
    let (_, rows) = trail(&app, Role::Auditor, "?operation=POST").await;
    let row = rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["path"] == format!("{BASE}/clusters"))
        .expect("the write is in the trail")
        .clone();
    assert_eq!(row["request_id"], id.as_str(), "{row}");
    let committed: String = sqlx::query_scalar(
        "SELECT metadata ->> 'request_id' FROM events
         WHERE aggregate_type = 'config' ORDER BY recorded_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(committed, id, "the commit records the same id");

    let echoed = app
        .send(
            reqwest::Method::GET,
            "/healthz",
            None,
            &[("x-request-id", "mine-1")],
        )
        .await;
    assert_eq!(
        echoed.header("x-request-id"),
        "mine-1",
        "the client's own is kept"
    );
}
