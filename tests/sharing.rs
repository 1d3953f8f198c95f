//! Sharing between tenants (FR-MT-005) against a real Postgres: an owner's admin grants a tenant
//! read access to a cluster or template; the grantee reads it and refers to it as `owner/name`;
//! nobody else sees it; revoking is refused while it is referred to, naming what would break.

use efms_domain::Role;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const ACME: &str = "/api/v1/tenants/acme";
const BETA: &str = "/api/v1/tenants/beta";
const GAMMA: &str = "/api/v1/tenants/gamma";

fn cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s" })
}

fn route(name: &str, cluster: &str) -> Value {
    json!({ "name": name, "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] })
}

/// `method path` with `role`'s token of `tenant`: status and JSON body.
async fn call(
    app: &TestApp,
    (role, tenant): (Role, &str),
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(app.token(role, Some(tenant)));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(app: &TestApp, who: (Role, &str), path: &str, body: &Value) -> (u16, Value) {
    call(app, who, reqwest::Method::POST, path, Some(body)).await
}

async fn get(app: &TestApp, who: (Role, &str), path: &str) -> (u16, Value) {
    call(app, who, reqwest::Method::GET, path, None).await
}

async fn delete(app: &TestApp, who: (Role, &str), path: &str) -> (u16, Value) {
    call(app, who, reqwest::Method::DELETE, path, None).await
}

/// Tenants acme, beta and gamma; acme has the clusters `payments` and `private`.
async fn three_tenants(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    for slug in ["acme", "beta", "gamma"] {
        app.create_tenant(slug, slug).await;
    }
    for name in ["payments", "private"] {
        let created = app.post(&format!("{ACME}/clusters"), &cluster(name)).await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    app
}

async fn grant(app: &TestApp, grantee: &str, kind: &str, name: &str) -> (u16, Value) {
    post(
        app,
        (Role::Admin, "acme"),
        &format!("{ACME}/grants"),
        &json!({ "grantee": grantee, "kind": kind, "name": name }),
    )
    .await
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_granted_cluster_is_read_and_referred_to_by_the_grantee_only(pool: PgPool) {
    let app = three_tenants(pool.clone()).await;
    let (status, granted) = grant(&app, "beta", "cluster", "payments").await;
    assert_eq!(status, 201, "{granted}");
    assert_eq!(granted["reference"], "acme/payments");
    assert_eq!(granted["granted_by"], "tester (admin)");

    // The grantee sees the document; another tenant sees nothing.
    let (status, shared) = get(&app, (Role::Viewer, "beta"), &format!("{BETA}/shared")).await;
    assert_eq!(status, 200, "{shared}");
    assert_eq!(shared.as_array().unwrap().len(), 1, "{shared}");
    assert_eq!(shared[0]["owner"], "acme");
    assert_eq!(shared[0]["reference"], "acme/payments");
    assert_eq!(shared[0]["document"]["name"], "payments");
    let (_, nothing) = get(&app, (Role::Admin, "gamma"), &format!("{GAMMA}/shared")).await;
    assert_eq!(nothing, json!([]));
    // The owner's API stays closed to the grantee.
    let (status, _) = get(
        &app,
        (Role::Admin, "beta"),
        &format!("{ACME}/clusters/payments"),
    )
    .await;
    assert_eq!(status, 404);

    // The grantee refers to it by its qualified name; what is not granted is refused, saying so.
    let (status, body) = post(
        &app,
        (Role::Operator, "beta"),
        &format!("{BETA}/routes"),
        &route("r", "acme/payments"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for (tenant, target) in [("beta", "acme/private"), ("gamma", "acme/payments")] {
        let (status, body) = post(
            &app,
            (Role::Operator, tenant),
            &format!("/api/v1/tenants/{tenant}/routes"),
            &route("r2", target),
        )
        .await;
        assert_eq!(status, 422, "{tenant} → {target}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("tenant `acme` does not share"),
            "{body}"
        );
    }

    // Underneath: in beta's transaction, with the API's role and no tenant filter, acme's
    // granted row is visible and nothing else of acme's (nor anything of gamma's).
    let mut tx =
        efms_commands::Scope::Tenant(efms_domain::TenantSlug::parse("beta").unwrap().tenant_id())
            .begin(&pool)
            .await
            .unwrap();
    let visible: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id::text, name FROM config_resources ORDER BY name")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let acme_id = efms_domain::TenantSlug::parse("acme")
        .unwrap()
        .tenant_id()
        .to_string();
    let of_acme: Vec<&str> = visible
        .iter()
        .filter(|(tenant, _)| *tenant == acme_id)
        .map(|(_, name)| name.as_str())
        .collect();
    assert_eq!(of_acme, ["payments"], "{visible:?}");
    assert_eq!(
        visible.len(),
        2,
        "beta's route and acme's payments: {visible:?}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn revoking_a_grant_in_use_is_refused_naming_what_would_break(pool: PgPool) {
    let app = three_tenants(pool).await;
    assert_eq!(grant(&app, "beta", "cluster", "payments").await.0, 201);
    let (status, body) = post(
        &app,
        (Role::Operator, "beta"),
        &format!("{BETA}/routes"),
        &route("checkout", "acme/payments"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let revoke = format!("{ACME}/grants/beta/cluster/payments");

    let (status, refused) = delete(&app, (Role::Admin, "acme"), &revoke).await;
    assert_eq!(status, 409, "{refused}");
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("route `checkout` on branch `main`"),
        "{detail}"
    );
    // Nor may the owner delete what it shares.
    let (status, body) = delete(
        &app,
        (Role::Admin, "acme"),
        &format!("{ACME}/clusters/payments"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("shared with beta"),
        "{body}"
    );
    let (_, grants) = get(&app, (Role::Viewer, "acme"), &format!("{ACME}/grants")).await;
    assert_eq!(
        grants.as_array().unwrap().len(),
        1,
        "still granted: {grants}"
    );

    // Once the grantee no longer refers to it, the grant goes, and so does the reference.
    let (status, _) = delete(
        &app,
        (Role::Operator, "beta"),
        &format!("{BETA}/routes/checkout"),
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = delete(&app, (Role::Admin, "acme"), &revoke).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = delete(&app, (Role::Admin, "acme"), &revoke).await;
    assert_eq!(status, 404);
    let (status, body) = post(
        &app,
        (Role::Operator, "beta"),
        &format!("{BETA}/routes"),
        &route("checkout", "acme/payments"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (_, shared) = get(&app, (Role::Viewer, "beta"), &format!("{BETA}/shared")).await;
    assert_eq!(shared, json!([]));
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn only_admins_grant_and_only_existing_clusters_and_templates_without_secrets(pool: PgPool) {
    let app = three_tenants(pool).await;
    for role in [Role::Operator, Role::Viewer, Role::Auditor] {
        let (status, body) = post(
            &app,
            (role, "acme"),
            &format!("{ACME}/grants"),
            &json!({ "grantee": "beta", "kind": "cluster", "name": "payments" }),
        )
        .await;
        assert_eq!(status, 403, "{role}: {body}");
    }
    // Another tenant's admin cannot grant acme's resources.
    let (status, _) = post(
        &app,
        (Role::Admin, "beta"),
        &format!("{ACME}/grants"),
        &json!({ "grantee": "beta", "kind": "cluster", "name": "payments" }),
    )
    .await;
    assert_eq!(status, 404);

    let secret = app
        .post(&format!("{ACME}/secrets"), &common_secret("client-cert"))
        .await;
    assert_eq!(secret.status, 201, "{}", secret.body);
    let mut tls_cluster = cluster("mtls");
    tls_cluster["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": { "tls_certificate_sds_secret_configs": [{ "name": "client-cert",
            "sds_config": { "ads": {}, "resource_api_version": "V3" } }] } } });
    let created = app.post(&format!("{ACME}/clusters"), &tls_cluster).await;
    assert_eq!(created.status, 201, "{}", created.body);

    for (body, pointer, words) in [
        (
            json!({ "grantee": "acme", "kind": "cluster", "name": "payments" }),
            "/grantee",
            "itself",
        ),
        (
            json!({ "grantee": "nobody", "kind": "cluster", "name": "payments" }),
            "/grantee",
            "no tenant",
        ),
        (
            json!({ "grantee": "beta", "kind": "secret", "name": "client-cert" }),
            "/kind",
            "never shared",
        ),
        (
            json!({ "grantee": "beta", "kind": "cluster", "name": "missing" }),
            "/name",
            "no cluster `missing`",
        ),
        (
            json!({ "grantee": "beta", "kind": "cluster", "name": "mtls" }),
            "/name",
            "uses secret `client-cert`",
        ),
    ] {
        let (status, answer) = post(
            &app,
            (Role::Admin, "acme"),
            &format!("{ACME}/grants"),
            &body,
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        let error = &answer["errors"][0];
        assert_eq!(error["pointer"], pointer, "{answer}");
        assert!(
            error["detail"].as_str().unwrap_or_default().contains(words)
                || answer.to_string().contains(words),
            "{answer}"
        );
    }
    assert_eq!(grant(&app, "beta", "cluster", "payments").await.0, 201);
    let (status, body) = grant(&app, "beta", "cluster", "payments").await;
    assert_eq!(status, 409, "{body}");
    // A shared cluster may not start using a secret.
    let mut payments = cluster("payments");
    payments["transport_socket"] = tls_cluster["transport_socket"].clone();
    let changed = app
        .put(&format!("{ACME}/clusters/payments"), &payments, &[])
        .await;
    assert_eq!(changed.status, 409, "{}", changed.body);
    assert!(
        changed.body["detail"]
            .as_str()
            .unwrap()
            .contains("secrets are never shared"),
        "{}",
        changed.body
    );
}

fn common_secret(name: &str) -> Value {
    let mut secret = efms_tests::fixture("secret_tls_certificate");
    secret["name"] = json!(name);
    secret
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_grantee_declares_resources_from_a_shared_template(pool: PgPool) {
    let app = three_tenants(pool).await;
    let template = json!({
        "name": "web", "kind": "cluster", "parameters": { "port": { "default": 8080 } },
        "body": { "type": "STATIC", "connect_timeout": "2s", "load_assignment": {
            "cluster_name": "{{name}}", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "10.0.0.1", "port_value": "{{port}}" } } } }] }] } }
    });
    let created = app.post(&format!("{ACME}/templates"), &template).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let declaration = json!({ "$template": { "template": "acme/web", "name": "shop",
        "parameters": { "port": 9090 } } });

    let (status, body) = post(
        &app,
        (Role::Operator, "beta"),
        &format!("{BETA}/clusters"),
        &declaration,
    )
    .await;
    assert_eq!(status, 422, "not shared yet: {body}");
    assert!(
        body.to_string().contains("shares no template `web`"),
        "{body}"
    );

    assert_eq!(grant(&app, "beta", "template", "web").await.0, 201);
    let (status, body) = post(
        &app,
        (Role::Operator, "beta"),
        &format!("{BETA}/clusters"),
        &declaration,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (_, shop) = get(
        &app,
        (Role::Viewer, "beta"),
        &format!("{BETA}/clusters/shop"),
    )
    .await;
    assert_eq!(shop["connect_timeout"], "2s", "{shop}");
    assert_eq!(
        shop["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"],
        9090,
        "{shop}"
    );
    // The template is in use by beta: acme cannot revoke it.
    let (status, body) = delete(
        &app,
        (Role::Admin, "acme"),
        &format!("{ACME}/grants/beta/template/web"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("cluster `shop`"),
        "{body}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn grants_and_refused_revocations_are_in_the_owners_audit_trail(pool: PgPool) {
    let app = three_tenants(pool).await;
    assert_eq!(grant(&app, "beta", "cluster", "payments").await.0, 201);
    let (status, _) = post(
        &app,
        (Role::Operator, "acme"),
        &format!("{ACME}/grants"),
        &json!({ "grantee": "gamma", "kind": "cluster", "name": "payments" }),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = delete(
        &app,
        (Role::Admin, "acme"),
        &format!("{ACME}/grants/beta/cluster/payments"),
    )
    .await;
    assert_eq!(status, 204);
    let (status, trail) = get(
        &app,
        (Role::Auditor, "acme"),
        &format!("{ACME}/audit?resource=grants"),
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    let seen: Vec<(String, i64)> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["operation"].as_str().unwrap().to_owned(),
                entry["status"].as_i64().unwrap(),
            )
        })
        .collect();
    for expected in [("POST", 201), ("POST", 403), ("DELETE", 204)] {
        assert!(
            seen.contains(&(expected.0.to_owned(), expected.1)),
            "{expected:?} in {trail}"
        );
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_revocation_racing_a_new_reference_never_lets_both_land(pool: PgPool) {
    let app = three_tenants(pool).await;
    let revoke = format!("{ACME}/grants/beta/cluster/payments");
    let mut outcomes: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for round in 0..20_u64 {
        let (status, _) = grant(&app, "beta", "cluster", "payments").await;
        assert!(matches!(status, 201 | 409), "round {round}: grant {status}");
        let name = format!("r{round}");
        let routes = format!("{BETA}/routes");
        let body = route(&name, "acme/payments");
        let ((created, body), (revoked, answer)) = tokio::join!(
            post(&app, (Role::Operator, "beta"), &routes, &body),
            async {
                // From together to well after: the rounds cover every overlap.
                tokio::time::sleep(std::time::Duration::from_millis(round * 4)).await;
                delete(&app, (Role::Admin, "acme"), &revoke).await
            },
        );
        let outcome = match (created, revoked) {
            (201, 409) => "the reference came first; the revocation was refused",
            (422, 204) => "the revocation came first; the reference was refused",
            _ => panic!("round {round}: route {created} {body}, revocation {revoked} {answer}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
        if created == 201 {
            let (status, _) = delete(
                &app,
                (Role::Operator, "beta"),
                &format!("{BETA}/routes/{name}"),
            )
            .await;
            assert_eq!(status, 204);
        }
    }
    println!("{outcomes:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_grant_to_a_missing_tenant_is_answered_like_one_to_the_tenant_itself(pool: PgPool) {
    let app = three_tenants(pool).await;
    let missing = grant(&app, "nobody", "cluster", "payments").await;
    let itself = grant(&app, "acme", "cluster", "payments").await;
    assert_eq!(missing.0, 422, "{}", missing.1);
    assert_eq!(missing, itself, "the answers tell the two apart");
    assert!(!missing.1.to_string().contains("nobody"), "{}", missing.1);

    // A grant refused for another reason says nothing of the grantee, existing or not.
    let missing = grant(&app, "nobody", "cluster", "absent").await;
    let existing = grant(&app, "beta", "cluster", "absent").await;
    assert_eq!(missing.0, 422, "{}", missing.1);
    assert_eq!(missing, existing, "the answers tell the two apart");
    assert_eq!(missing.1["errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(missing.1["errors"][0]["pointer"], "/name");
}
