//! Users, service accounts and password login against a real Postgres: tokens name their user and
//! are refused once it is deleted; password guessing is slowed down.

use efms_domain::Role;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

async fn login(app: &TestApp, username: &str, password: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/api/v1/auth/token"))
        .json(&json!({ "tenant": "acme", "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn create_cluster(app: &TestApp, token: &str, name: &str) -> u16 {
    app.client
        .post(app.url(&format!("{BASE}/clusters")))
        .bearer_auth(token)
        .json(&json!({ "name": name, "type": "STATIC", "connect_timeout": "1s" }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn as_admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(
        app,
        &app.token(Role::Admin, Some("acme")),
        method,
        path,
        body,
    )
    .await
}

async fn call(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_person_logs_in_and_a_deleted_users_token_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let (status, alice) = as_admin(
        &app,
        reqwest::Method::POST,
        &format!("{BASE}/users"),
        Some(
            json!({ "username": "alice", "role": "operator", "password": "correct horse battery" }),
        ),
    )
    .await;
    assert_eq!(status, 201, "{alice}");
    assert!(alice.get("token").is_none());
    let (_, listed) = as_admin(&app, reqwest::Method::GET, &format!("{BASE}/users"), None).await;
    assert_eq!(listed[0]["username"], "alice");
    assert!(!listed.to_string().contains("argon2"), "no hash is shown");

    assert_eq!(login(&app, "alice", "wrong password!").await.0, 401);
    assert_eq!(login(&app, "nobody", "correct horse battery").await.0, 401);
    let (status, token) = login(&app, "alice", "correct horse battery").await;
    assert_eq!(status, 200, "{token}");
    let token = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &token, "a").await, 201);

    let id = alice["id"].as_str().unwrap();
    let (status, _) = as_admin(
        &app,
        reqwest::Method::DELETE,
        &format!("{BASE}/users/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        create_cluster(&app, &token, "b").await,
        401,
        "a deleted user's token"
    );
    assert_eq!(login(&app, "alice", "correct horse battery").await.0, 401);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_service_account_gets_a_long_lived_token_revoked_by_deleting_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let (status, ci) = as_admin(
        &app,
        reqwest::Method::POST,
        &format!("{BASE}/users"),
        Some(json!({ "username": "ci", "role": "operator", "service": true })),
    )
    .await;
    assert_eq!(status, 201, "{ci}");
    let token = ci["token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &token, "a").await, 201);
    let (_, listed) = as_admin(&app, reqwest::Method::GET, &format!("{BASE}/users"), None).await;
    assert!(listed[0].get("token").is_none(), "a token is shown once");
    let id = ci["id"].as_str().unwrap();
    assert_eq!(
        as_admin(
            &app,
            reqwest::Method::DELETE,
            &format!("{BASE}/users/{id}"),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(create_cluster(&app, &token, "b").await, 401);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn repeated_failed_logins_answer_429_and_only_admins_manage_users(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let (status, _) = as_admin(
        &app,
        reqwest::Method::POST,
        &format!("{BASE}/users"),
        Some(json!({ "username": "bob", "role": "viewer", "password": "a long password" })),
    )
    .await;
    assert_eq!(status, 201);
    for _ in 0..5 {
        assert_eq!(login(&app, "bob", "guess guess guess").await.0, 401);
    }
    assert_eq!(
        login(&app, "bob", "a long password").await.0,
        429,
        "even the right one, for now"
    );

    let (status, bad) = as_admin(
        &app,
        reqwest::Method::POST,
        &format!("{BASE}/users"),
        Some(json!({ "username": "Carol!", "role": "root", "password": "short" })),
    )
    .await;
    assert_eq!(status, 422);
    let pointers: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/username", "/role", "/password"]);
    let by_operator = app
        .client
        .post(app.url(&format!("{BASE}/users")))
        .bearer_auth(app.token(Role::Operator, Some("acme")))
        .json(&json!({ "username": "eve", "role": "admin", "password": "escalation attempt" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_operator.status(),
        403,
        "an operator cannot make an admin"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn changing_a_persons_role_or_password_refuses_the_tokens_issued_before(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let (status, bob) = as_admin(
        &app,
        reqwest::Method::POST,
        &format!("{BASE}/users"),
        Some(json!({ "username": "bob", "role": "viewer", "password": "first-password-1" })),
    )
    .await;
    assert_eq!(status, 201, "{bob}");
    let path = format!("{BASE}/users/{}", bob["id"].as_str().unwrap());
    let (_, login_body) = login(&app, "bob", "first-password-1").await;
    let viewer_token = login_body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &viewer_token, "a").await, 403);

    let (status, changed) = as_admin(
        &app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "role": "operator" })),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["role"], "operator");
    let (status, shown) = as_admin(&app, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["role"], "operator", "{shown}");
    assert_eq!(shown["username"], "bob", "{shown}");
    assert!(
        changed.get("token").is_none(),
        "a person logs in: {changed}"
    );
    let (status, refused) = call(
        &app,
        &viewer_token,
        reqwest::Method::GET,
        &format!("{BASE}/clusters"),
        None,
    )
    .await;
    assert_eq!(status, 401, "the viewer token is gone: {refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("changed"),
        "{refused}"
    );
    let (_, login_body) = login(&app, "bob", "first-password-1").await;
    let operator_token = login_body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &operator_token, "a").await, 201);

    let (status, _) = as_admin(
        &app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "password": "second-password-2" })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(create_cluster(&app, &operator_token, "b").await, 401);
    assert_eq!(login(&app, "bob", "first-password-1").await.0, 401);
    let (status, login_body) = login(&app, "bob", "second-password-2").await;
    assert_eq!(status, 200, "{login_body}");
    let token = login_body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &token, "b").await, 201);

    // Bad changes are refused and change nothing.
    for (body, pointer) in [
        (json!({}), ""),
        (json!({ "role": "system" }), "/role"),
        (json!({ "password": "short" }), "/password"),
    ] {
        let (status, answer) = as_admin(&app, reqwest::Method::PATCH, &path, Some(body)).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["errors"][0]["pointer"], pointer, "{answer}");
    }
    assert_eq!(create_cluster(&app, &token, "c").await, 201, "still valid");
    let (status, _) = call(
        &app,
        &token,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "role": "admin" })),
    )
    .await;
    assert_eq!(status, 403, "an operator cannot promote itself");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn changing_a_service_accounts_role_answers_a_new_token_and_refuses_the_old(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let (status, robot) = as_admin(
        &app,
        reqwest::Method::POST,
        &format!("{BASE}/users"),
        Some(json!({ "username": "ci", "role": "operator", "service": true })),
    )
    .await;
    assert_eq!(status, 201, "{robot}");
    let old_token = robot["token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &old_token, "a").await, 201);
    let path = format!("{BASE}/users/{}", robot["id"].as_str().unwrap());
    let (status, answer) = as_admin(
        &app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "password": "a-password-for-a-robot" })),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["pointer"], "/password");
    assert_eq!(
        create_cluster(&app, &old_token, "b").await,
        201,
        "a refused change changes nothing"
    );

    let (status, changed) = as_admin(
        &app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "role": "viewer" })),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    let new_token = changed["token"].as_str().unwrap().to_owned();
    assert_eq!(create_cluster(&app, &old_token, "c").await, 401);
    assert_eq!(
        create_cluster(&app, &new_token, "c").await,
        403,
        "a viewer now"
    );
    let (status, _) = call(
        &app,
        &new_token,
        reqwest::Method::GET,
        &format!("{BASE}/clusters"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}
