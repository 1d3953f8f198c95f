//! The HTTP API over a real socket against a real Postgres: authentication, problem+json errors and
//! the tenant registry.

use efms_domain::Role;
use efms_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

const PROBLEM: &str = "application/problem+json";

fn content_type(response: &reqwest::Response) -> String {
    response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn health_and_readiness_answer_without_a_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn api_without_a_valid_token_is_401_problem_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let expired = expired_token();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("not bearer", Some("Basic dXNlcjpwdw==".to_owned())),
        ("garbage", Some("Bearer not-a-jwt".to_owned())),
        (
            "other key",
            Some(format!(
                "Bearer {}",
                efms_api::JwtKeys::from_secret(&[1; 32])
                    .issue("x", Role::System, None, std::time::Duration::from_secs(60))
                    .unwrap()
            )),
        ),
        ("expired", Some(format!("Bearer {expired}"))),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                claims_token(&json!({ "nbf": now() + 3600 }))
            )),
        ),
        (
            "another issuer",
            Some(format!(
                "Bearer {}",
                claims_token(&json!({ "iss": "elsewhere" }))
            )),
        ),
        (
            "another audience",
            Some(format!(
                "Bearer {}",
                claims_token(&json!({ "aud": "elsewhere" }))
            )),
        ),
        ("alg none", Some(format!("Bearer {}", unsigned_token()))),
    ];
    for (case, header) in cases {
        let mut request = app.client.get(app.url("/api/v1/tenants"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(content_type(&response), PROBLEM, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 401, "{case}");
        assert_eq!(body["type"], "urn:efms:problem:unauthorized", "{case}");
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token of the right key, valid but for `changes` to its claims.
fn claims_token(changes: &Value) -> String {
    let mut claims = json!({
        "sub": "x", "role": "system", "iss": "efms", "aud": "efms",
        "iat": now(), "nbf": now(), "exp": now() + 3600,
    });
    for (key, value) in changes.as_object().unwrap() {
        claims[key] = value.clone();
    }
    efms_tests::sign(&claims)
}

/// A well-formed token with `"alg": "none"` and no signature.
fn unsigned_token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({
        "sub": "x", "role": "system", "iss": "efms", "aud": "efms",
        "iat": now(), "nbf": now(), "exp": now() + 3600,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A token of the right key whose lifetime ended an hour ago.
fn expired_token() -> String {
    let now = chrono::Utc::now().timestamp();
    efms_tests::sign(&json!({
        "sub": "late", "role": "system", "iss": "efms", "aud": "efms",
        "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
    }))
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn system_token_lists_tenants(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .client
        .get(app.url("/api/v1/tenants"))
        .bearer_auth(app.system_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["items"], json!([]));
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn created_tenant_answers_201_with_location_and_etag_and_reads_back(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .client
        .post(app.url("/api/v1/tenants"))
        .bearer_auth(app.system_token())
        .json(&json!({ "slug": "acme", "name": "Acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/api/v1/tenants/acme");
    assert_eq!(response.headers()["etag"], "\"1\"");
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["slug"], "acme");
    assert_eq!(created["name"], "Acme");
    assert_eq!(created["created_by"], "tester (system)");

    let fetched: Value = app
        .client
        .get(app.url("/api/v1/tenants/acme"))
        .bearer_auth(app.system_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn creating_an_existing_tenant_is_409_and_changes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let response = app
        .client
        .post(app.url("/api/v1/tenants"))
        .bearer_auth(app.system_token())
        .json(&json!({ "slug": "acme", "name": "Impostor" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(content_type(&response), PROBLEM);
    let fetched: Value = app
        .client
        .get(app.url("/api/v1/tenants/acme"))
        .bearer_auth(app.system_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["name"], "Acme");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn concurrent_creations_of_one_slug_give_one_201_and_one_409(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let send = |name: &'static str| {
        app.client
            .post(app.url("/api/v1/tenants"))
            .bearer_auth(app.system_token())
            .json(&json!({ "slug": "race", "name": name }))
            .send()
    };
    let (a, b) = tokio::join!(send("A"), send("B"));
    let mut statuses = vec![a.unwrap().status(), b.unwrap().status()];
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::CREATED, StatusCode::CONFLICT]);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn invalid_tenant_bodies_are_answered_with_the_pointer_at_fault(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let cases = [
        (json!({ "slug": "Not A Slug", "name": "x" }), 422, "/slug"),
        (json!({ "slug": "ok", "name": "" }), 422, "/name"),
        (json!({ "slug": "ok" }), 422, "/name"),
        (
            json!({ "slug": "ok", "name": "x", "colour": "red" }),
            422,
            "/colour",
        ),
        (json!({ "slug": 7, "name": "x" }), 422, "/slug"),
    ];
    for (body, status, pointer) in cases {
        let response = app
            .client
            .post(app.url("/api/v1/tenants"))
            .bearer_auth(app.system_token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        assert_eq!(content_type(&response), PROBLEM);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{body}: {problem}"
        );
    }
    let malformed = app
        .client
        .post(app.url("/api/v1/tenants"))
        .bearer_auth(app.system_token())
        .header("content-type", "application/json")
        .body("{\"slug\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let not_json = app
        .client
        .post(app.url("/api/v1/tenants"))
        .bearer_auth(app.system_token())
        .body("slug=acme")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn tenant_roles_cannot_create_tenants_and_see_only_their_own(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("globex", "Globex").await;
    let admin = app.token(Role::Admin, Some("acme"));

    let create = app
        .client
        .post(app.url("/api/v1/tenants"))
        .bearer_auth(&admin)
        .json(&json!({ "slug": "mine", "name": "Mine" }))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), StatusCode::FORBIDDEN);

    let list: Value = app
        .client
        .get(app.url("/api/v1/tenants"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slugs: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].clone())
        .collect();
    assert_eq!(slugs, vec![json!("acme")]);

    let other = app
        .client
        .get(app.url("/api/v1/tenants/globex"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(content_type(&other), PROBLEM);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn tenant_list_pages_with_a_cursor_and_refuses_a_bad_limit(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for slug in ["a", "b", "c"] {
        app.create_tenant(slug, slug).await;
    }
    let page = |query: &'static str| {
        app.client
            .get(app.url(&format!("/api/v1/tenants?{query}")))
            .bearer_auth(app.system_token())
            .send()
    };
    let first: Value = page("limit=2").await.unwrap().json().await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_cursor"], "b");
    let second: Value = page("limit=2&cursor=b")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"][0]["slug"], "c");
    assert!(second.get("next_cursor").is_none());
    let bad = page("limit=0").await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "limit");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn unknown_routes_and_methods_answer_problem_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let missing = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(content_type(&missing), PROBLEM);
    let wrong = app
        .client
        .delete(app.url("/api/v1/tenants"))
        .bearer_auth(app.system_token())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(content_type(&wrong), PROBLEM);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn metrics_count_requests_by_route_template(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"efms_http_requests_total{method="POST",route="/api/v1/tenants",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"efms_commands_total{aggregate="tenant",outcome="committed"} 1"#),
        "{text}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_openapi_document_covers_every_route_and_the_reference_page_is_served(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/v1/tenants", "get"),
        ("/api/v1/tenants", "post"),
        ("/api/v1/tenants/{slug}", "get"),
        ("/api/v1/tenants/{slug}", "patch"),
        ("/api/v1/tenants/{slug}", "delete"),
        ("/api/v1/tenants/{slug}/restore", "post"),
        ("/api/v1/tenants/{slug}/suspend", "post"),
        ("/api/v1/tenants/{slug}/resume", "post"),
        ("/api/v1/tenants/{slug}/history", "get"),
        ("/api/v1/tenants/{tenant}/{kind}", "get"),
        ("/api/v1/tenants/{tenant}/{kind}", "post"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}", "get"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}", "put"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}", "patch"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}", "delete"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/history", "get"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/resources", "get"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/declaration", "get"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/rollback", "post"),
        ("/api/v1/tenants/{tenant}/revisions", "get"),
        ("/api/v1/tenants/{tenant}/diff", "get"),
        ("/api/v1/tenants/{tenant}/rollback", "post"),
        ("/api/v1/tenants/{tenant}/bulk", "post"),
        ("/api/v1/tenants/{tenant}/jobs/{id}", "get"),
        ("/api/v1/tenants/{tenant}/audit", "get"),
        ("/api/v1/tenants/{tenant}/quotas", "get"),
        ("/api/v1/tenants/{tenant}/quotas", "put"),
        ("/api/v1/tenants/{tenant}/users", "get"),
        ("/api/v1/tenants/{tenant}/users", "post"),
        ("/api/v1/tenants/{tenant}/users/{id}", "get"),
        ("/api/v1/tenants/{tenant}/users/{id}", "delete"),
        ("/api/v1/tenants/{tenant}/users/{id}", "patch"),
        ("/api/v1/tenants/{tenant}/grants", "get"),
        ("/api/v1/tenants/{tenant}/grants", "post"),
        (
            "/api/v1/tenants/{tenant}/grants/{grantee}/{kind}/{name}",
            "delete",
        ),
        ("/api/v1/tenants/{tenant}/shared", "get"),
        ("/api/v1/auth/token", "post"),
        ("/api/v1/tenants/{tenant}/branches", "get"),
        ("/api/v1/tenants/{tenant}/branches", "post"),
        ("/api/v1/tenants/{tenant}/branches/{name}", "get"),
        ("/api/v1/tenants/{tenant}/branches/{name}", "delete"),
        ("/api/v1/tenants/{tenant}/branches/{name}/diff", "get"),
        ("/api/v1/tenants/{tenant}/branches/{name}/merge", "post"),
        ("/api/v1/tenants/{tenant}/proxies", "get"),
        ("/api/v1/tenants/{tenant}/proxies/{node_id}", "get"),
        ("/api/v1/tenants/{tenant}/proxies/{node_id}/history", "get"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/bootstrap", "get"),
        ("/api/v1/tenants/{tenant}/metrics/{kind}/{name}", "get"),
        ("/api/v1/tenants/{tenant}/revisions/{n}/impact", "get"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/health", "get"),
        ("/api/v1/tenants/{tenant}/health", "get"),
        ("/api/v1/tenants/{tenant}/drift", "get"),
        ("/api/v1/tenants/{tenant}/events", "get"),
        ("/api/v1/tenants/{tenant}/events/stream", "get"),
        ("/api/v1/tenants/{tenant}/events/ws", "get"),
        ("/api/v1/tenants/{tenant}/events/tickets", "post"),
        ("/api/v1/tenants/{tenant}/alert-rules", "post"),
        ("/api/v1/tenants/{tenant}/alert-rules", "get"),
        ("/api/v1/tenants/{tenant}/alert-rules/{id}", "get"),
        ("/api/v1/tenants/{tenant}/alert-rules/{id}", "patch"),
        ("/api/v1/tenants/{tenant}/alert-rules/{id}", "delete"),
        ("/api/v1/tenants/{tenant}/alerts", "get"),
        ("/api/v1/tenants/{tenant}/alerts/{id}/ack", "post"),
        ("/api/v1/tenants/{tenant}/webhooks", "post"),
        ("/api/v1/tenants/{tenant}/webhooks", "get"),
        ("/api/v1/tenants/{tenant}/webhooks/{id}", "get"),
        ("/api/v1/tenants/{tenant}/webhooks/{id}", "patch"),
        ("/api/v1/tenants/{tenant}/webhooks/{id}", "delete"),
        (
            "/api/v1/tenants/{tenant}/webhooks/{id}/rotate-secret",
            "post",
        ),
        ("/api/v1/tenants/{tenant}/webhooks/{id}/deliveries", "get"),
        (
            "/api/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/redeliver",
            "post",
        ),
        ("/api/v1/tenants/{tenant}/proxy-tokens", "get"),
        ("/api/v1/tenants/{tenant}/proxy-tokens/{id}", "delete"),
        ("/api/v1/tenants/{tenant}/vms", "post"),
        ("/api/v1/tenants/{tenant}/vms", "get"),
        ("/api/v1/tenants/{tenant}/vms/{name}", "get"),
        ("/api/v1/tenants/{tenant}/vms/{name}", "delete"),
        ("/api/v1/tenants/{tenant}/vms/{name}", "patch"),
        ("/api/v1/tenants/{tenant}/vms/{name}/token", "post"),
        ("/api/v1/tenants/{tenant}/vms/{name}/history", "get"),
        ("/api/v1/tenants/{tenant}/vms/{name}/utilisation", "get"),
        ("/api/v1/tenants/{tenant}/containers", "get"),
        ("/api/v1/tenants/{tenant}/containers/{id}", "get"),
        ("/api/v1/tenants/{tenant}/containers/{id}/events", "get"),
        ("/api/v1/tenants/{tenant}/containers/{id}", "delete"),
        ("/api/v1/tenants/{tenant}/containers/{id}/{action}", "post"),
        ("/api/v1/tenants/{tenant}/vms/{name}/containers", "post"),
        ("/api/v1/tenants/{tenant}/{kind}/{name}/rollouts", "post"),
        (
            "/api/v1/tenants/{tenant}/{kind}/{name}/rollouts/{id}",
            "get",
        ),
        (
            "/api/v1/tenants/{tenant}/{kind}/{name}/rollouts/{id}/{action}",
            "post",
        ),
    ];
    for (path, method) in expected {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} has responses"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "no undocumented extra operations either"
    );
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/openapi.json"));
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_nul_character_in_a_query_is_a_400_not_a_500(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .client
        .get(app.url("/api/v1/tenants?cursor=%00abc"))
        .bearer_auth(app.system_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(content_type(&response), PROBLEM);
}
