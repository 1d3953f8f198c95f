//! Every route of the OpenAPI document, walked with a token of each role and with another
//! tenant's token: the answers match the role table of docs/security.md, and no route shows one
//! tenant's data to another (FR-MT-002, FR-MT-003).

use efms_domain::Role;
use efms_tests::TestApp;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Tenant(Role),
    /// An `admin` of another tenant.
    Stranger,
}

/// A concrete request for one documented operation.
fn request(path: &str, method: &str) -> (String, Option<(&'static str, Value)>) {
    let group_route = path.contains("/resources") || path.contains("/bootstrap");
    let concrete = path
        .replace("{tenant}", "acme")
        .replace("{slug}", "acme")
        .replace("{kind}", if group_route { "groups" } else { "clusters" })
        .replace("/branches/{name}", "/branches/feature")
        .replace("{name}", if group_route { "edge" } else { "a" })
        .replace("{node_id}", "edge-1")
        .replace("{grantee}", "globex")
        .replace("{id}", "0190d1c6-0000-7000-8000-000000000000");
    let query = if concrete.ends_with("/diff") && !concrete.contains("/branches/") {
        "?from=0&to=1"
    } else if concrete.ends_with("/bootstrap") {
        "?node_id=edge-1"
    } else {
        ""
    };
    let cluster = json!({ "name": "z", "type": "STATIC", "connect_timeout": "1s" });
    let body = match (method, path) {
        ("post", "/api/v1/tenants") => Some(json!({ "slug": "newco", "name": "New" })),
        ("post", p) if p.ends_with("/branches") => Some(json!({ "name": "other" })),
        ("post", p) if p.ends_with("/merge") => Some(json!({})),
        ("post", p) if p.ends_with("/rollback") => Some(json!({ "to_revision": 1 })),
        ("post", p) if p.ends_with("/bulk") => Some(json!({ "operations": [] })),
        ("put", p) if p.ends_with("/quotas") => Some(json!({ "resources_per_kind": 100 })),
        ("post", p) if p.ends_with("/grants") => {
            Some(json!({ "grantee": "globex", "kind": "cluster", "name": "a" }))
        }
        ("post", p) if p.ends_with("/users") => Some(
            json!({ "username": "walker", "role": "viewer", "password": "long-enough-password" }),
        ),
        ("patch", p) if p.ends_with("/users/{id}") => Some(json!({ "role": "viewer" })),
        ("post" | "put", _) => Some(cluster),
        ("patch", _) => {
            return (
                format!("{concrete}{query}"),
                Some((
                    "application/merge-patch+json",
                    json!({ "connect_timeout": "2s" }),
                )),
            )
        }
        _ => None,
    };
    (
        format!("{concrete}{query}"),
        body.map(|body| ("application/json", body)),
    )
}

async fn call(app: &TestApp, caller: Caller, method: &str, path: &str) -> (u16, String) {
    let token = match caller {
        Caller::Tenant(Role::System) => app.system_token(),
        Caller::Tenant(role) => app.token(role, Some("acme")),
        Caller::Stranger => app.token(Role::Admin, Some("globex")),
    };
    let (url, body) = request(path, method);
    let mut builder = app
        .client
        .request(
            method.to_uppercase().parse::<Method>().unwrap(),
            app.url(&url),
        )
        .bearer_auth(token);
    if let Some((content_type, body)) = body {
        builder = builder
            .header("content-type", content_type)
            .body(body.to_string());
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    // A live event stream does not end: its status and headers are the answer.
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|kind| kind.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        return (status, String::new());
    }
    (status, response.text().await.unwrap())
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn every_route_answers_each_role_as_the_role_table_says(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("globex", "Globex").await;
    for (collection, body) in [
        (
            "clusters",
            json!({ "name": "a", "type": "STATIC", "connect_timeout": "1s" }),
        ),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "cluster", "name": "a" }] }),
        ),
    ] {
        let answer = app
            .post(&format!("/api/v1/tenants/acme/{collection}"), &body)
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let branched = app
        .post(
            "/api/v1/tenants/acme/branches",
            &json!({ "name": "feature" }),
        )
        .await;
    assert_eq!(branched.status, 201);

    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations: Vec<(String, String)> = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            operations.push((path.clone(), method.clone()));
        }
    }
    assert!(operations.len() > 30, "{}", operations.len());

    let mut wrong = Vec::new();
    for (path, method) in &operations {
        // Health, metrics and the login route need no token.
        if !path.starts_with("/api/v1/") || path == "/api/v1/auth/token" {
            continue;
        }
        let read = method == "get";
        let tenant_route = path.starts_with("/api/v1/tenants/{");
        // Reads and writes of a tenant's data by each role, except the writes of those allowed
        // to write (they change the fixture; other tests cover them).
        let mut callers = vec![
            Caller::Tenant(Role::Viewer),
            Caller::Tenant(Role::Auditor),
            Caller::Tenant(Role::Proxy),
            Caller::Stranger,
        ];
        if read {
            callers.extend([Caller::Tenant(Role::Operator), Caller::Tenant(Role::Admin)]);
        }
        for caller in callers {
            let (status, body) = call(&app, caller, method, path).await;
            let expected_ok = match caller {
                // Another tenant's data does not exist for a stranger.
                Caller::Stranger if tenant_route => status == 404,
                // The tenant list shows a stranger only its own tenant; creating one is system's.
                Caller::Stranger => {
                    if read {
                        status == 200 && !body.contains("\"acme\"")
                    } else {
                        status == 403
                    }
                }
                Caller::Tenant(Role::Proxy) => status == 403,
                Caller::Tenant(Role::Viewer | Role::Auditor)
                    if !read && !path.ends_with("/events/tickets") =>
                {
                    status == 403
                }
                // Quotas are set by the system role alone.
                Caller::Tenant(_) if path.ends_with("/quotas") && !read => status == 403,
                // Users are listed by admins and auditors, managed by admins.
                Caller::Tenant(Role::Viewer | Role::Operator)
                    if path.ends_with("/users") || path.ends_with("/users/{id}") =>
                {
                    status == 403
                }
                // The audit trail is read by auditors and admins.
                Caller::Tenant(Role::Viewer | Role::Operator) if path.ends_with("/audit") => {
                    status == 403
                }
                // The bootstrap mints proxy tokens: a writing role only; the same roles list
                // and revoke them.
                Caller::Tenant(Role::Viewer | Role::Auditor)
                    if path.ends_with("/bootstrap") || path.contains("/proxy-tokens") =>
                {
                    status == 403
                }
                // A ticket for the tenant's event streams is a read: every tenant role gets one.
                Caller::Tenant(_) if path.ends_with("/events/tickets") => status == 201,
                // Webhooks are managed by admins alone.
                Caller::Tenant(Role::Viewer | Role::Auditor | Role::Operator)
                    if path.contains("/webhooks") =>
                {
                    status == 403
                }
                // The event WebSocket answers a plain request 400: it speaks WebSocket only.
                Caller::Tenant(_) if path.ends_with("/events/ws") => status == 400,
                // Reads of what exists answer 200; of what does not (a proxy never seen, an
                // unknown job), 404 — never 401 or 403.
                Caller::Tenant(_) => matches!(status, 200 | 404),
            };
            if !expected_ok {
                wrong.push(format!("{caller:?} {method} {path}: {status} {body}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers that break the role table:\n{}",
        wrong.join("\n")
    );
}
