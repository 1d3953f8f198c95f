//! Secret material at rest (NFR-SE-003) against a real Postgres: every value Envoy's schema marks
//! sensitive is sealed with the tenant's data key before it is stored, whatever path writes it,
//! never read back by any role, and refused outside secrets; the data keys move to a new master key
//! without touching the sealed secrets.

use efms_commands::keys::rewrap;
use efms_commands::Keyring;
use efms_domain::secrets::{open_document, Key};
use efms_domain::Role;
use efms_tests::{database_dump, fixture, TestApp, MASTER_KEY};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const BASE: &str = "/api/v1/tenants/acme";
/// The body of the fixture's private key.
const PRIVATE: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEXAMPLE";

async fn tenant_id(pool: &PgPool) -> Uuid {
    sqlx::query_scalar("SELECT tenant_id FROM tenants WHERE slug = 'acme'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_database_dump_holds_no_private_key_in_clear(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let secret = fixture("secret_tls_certificate");
    assert_eq!(
        app.post(&format!("{BASE}/secrets"), &secret).await.status,
        201
    );
    // Every other path that writes a secret: a branch, a bulk replace, a rollback, a merge.
    let branched = app
        .post(&format!("{BASE}/branches"), &json!({ "name": "b" }))
        .await;
    assert_eq!(branched.status, 201, "{}", branched.body);
    let mut changed = secret.clone();
    changed["tls_certificate"]["password"] = json!({ "inline_string": "hunter2-hunter2" });
    let bulk = app
        .post(
            &format!("{BASE}/bulk?branch=b"),
            &json!({ "operations": [{ "op": "replace", "kind": "secrets", "resource": changed }] }),
        )
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.body);
    let merged = app
        .post(&format!("{BASE}/branches/b/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    let rolled = app
        .post(&format!("{BASE}/rollback"), &json!({ "to_revision": 1 }))
        .await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);

    let dump = database_dump(&pool);
    assert!(
        dump.contains("MIIBszCCAVmgAwIBAgIUEXAMPLE"),
        "the certificate is public and stored"
    );
    assert!(
        dump.contains("efms:enc:v2:k1:"),
        "the private material is stored sealed"
    );
    assert!(
        !dump.contains(PRIVATE),
        "a private key is in the dump in clear"
    );
    assert!(
        !dump.contains("hunter2-hunter2"),
        "a password is in the dump in clear"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn data_keys_move_to_a_new_master_key_and_still_open_the_stored_secrets(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let created = app
        .post(
            &format!("{BASE}/secrets"),
            &fixture("secret_tls_certificate"),
        )
        .await;
    assert_eq!(created.status, 201);
    let tenant = tenant_id(&pool).await;
    let stored: serde_json::Value = sqlx::query_scalar(
        "SELECT document FROM config_resources WHERE kind = 'secret' AND name = 'client_cert'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let (old, new) = (Key::from_base64(MASTER_KEY).unwrap(), Key::generate());
    assert_eq!(rewrap(&pool, &old, &new).await.unwrap(), 1);
    assert_eq!(
        rewrap(&pool, &old, &new).await.unwrap(),
        0,
        "nothing left to move"
    );

    let stale = Keyring::new(pool.clone(), old);
    assert_eq!(stale.foreign_keys().await.unwrap(), 1);
    assert!(
        stale.get(tenant, "k1").await.is_err(),
        "the old master no longer opens it"
    );
    let current = Keyring::new(pool.clone(), new);
    assert_eq!(current.foreign_keys().await.unwrap(), 0);
    let key = current.get(tenant, "k1").await.unwrap().unwrap();
    let mut document = stored.clone();
    open_document(&mut document, &|id| (id == "k1").then(|| key.clone())).unwrap();
    assert!(document["tls_certificate"]["private_key"]["inline_string"]
        .as_str()
        .unwrap()
        .contains(PRIVATE));
    assert!(!stored.to_string().contains(PRIVATE));
}

/// `GET path` with `token`, as JSON text (empty when the answer is not 200).
async fn read_as(app: &TestApp, token: &str, path: &str) -> String {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.unwrap()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_generic_secrets_map_is_sealed_and_no_role_reads_it_back(pool: PgPool) {
    const API_TOKEN: &str = "generic-api-token-0123456789";
    const DB_PASSWORD: &str = "generic-db-password-9876543210";
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let secret = |token: &str| {
        json!({ "name": "upstream-credentials", "generic_secret": { "secrets": {
            "api": { "inline_string": token },
            "db": { "inline_string": DB_PASSWORD } } } })
    };
    let created = app
        .post(&format!("{BASE}/secrets"), &secret(API_TOKEN))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let changed = app
        .put(
            &format!("{BASE}/secrets/upstream-credentials"),
            &secret("generic-api-token-rotated"),
            &[],
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);

    for role in [Role::Viewer, Role::Auditor, Role::Operator, Role::Admin] {
        let token = app.token(role, Some("acme"));
        for path in [
            format!("{BASE}/secrets/upstream-credentials"),
            format!("{BASE}/secrets"),
            format!("{BASE}/secrets/upstream-credentials?revision=1"),
            format!("{BASE}/secrets/upstream-credentials/history"),
            format!("{BASE}/diff?from=1&to=2"),
            format!("{BASE}/diff?from=0&to=2"),
        ] {
            let text = read_as(&app, &token, &path).await;
            for clear in [API_TOKEN, DB_PASSWORD, "generic-api-token-rotated"] {
                assert!(
                    !text.contains(clear),
                    "{role:?} read `{clear}` at {path}: {text}"
                );
            }
        }
    }
    let shown = app
        .get(&format!("{BASE}/secrets/upstream-credentials"))
        .await;
    assert_eq!(
        shown.body["generic_secret"]["secrets"]["api"],
        json!({ "redacted": true })
    );

    let dump = database_dump(&pool);
    for clear in [API_TOKEN, DB_PASSWORD, "generic-api-token-rotated"] {
        assert!(!dump.contains(clear), "`{clear}` is in the dump in clear");
    }
    assert!(
        dump.contains("efms:enc:v2:"),
        "the map's values are stored sealed"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_camel_case_private_key_is_sealed_like_any_other(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let secret = json!({ "name": "camel", "tlsCertificate": {
        "certificateChain": { "inlineString": "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUEXAMPLE\n-----END CERTIFICATE-----\n" },
        "privateKey": { "inlineString": "camel-case-private-key-material" } } });
    let created = app.post(&format!("{BASE}/secrets"), &secret).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(!database_dump(&pool).contains("camel-case-private-key-material"));
}

/// A cluster that presents a client certificate with `private_key` as its key.
fn cluster_with_client_certificate(private_key: &serde_json::Value) -> serde_json::Value {
    json!({
        "name": "mtls-upstream",
        "connect_timeout": "1s",
        "type": "STRICT_DNS",
        "load_assignment": { "cluster_name": "mtls-upstream", "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 8443 } } } }] }] },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": { "tls_certificates": [{
                    "certificate_chain": { "filename": "/etc/envoy/client.crt" },
                    "private_key": private_key
                }] }
            }
        }
    })
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_inline_private_key_outside_a_secret_is_refused_naming_where_it_is(pool: PgPool) {
    const INLINE: &str = "inline-cluster-private-key-material";
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let inline = cluster_with_client_certificate(&json!({ "inline_string": INLINE }));
    let refused = app.post(&format!("{BASE}/clusters"), &inline).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        refused.body["errors"][0]["pointer"],
        "/transport_socket/typed_config/common_tls_context/tls_certificates/0/private_key",
        "{}",
        refused.body
    );
    assert!(
        refused.body["errors"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("SDS"),
        "{}",
        refused.body
    );
    let bulk = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [{ "op": "create", "kind": "clusters", "resource": inline }] }),
        )
        .await;
    assert_eq!(bulk.status, 422, "{}", bulk.body);
    let template = app
        .post(
            &format!("{BASE}/templates"),
            &json!({ "name": "mtls", "kind": "cluster",
                     "parameters": { "key": {} },
                     "body": cluster_with_client_certificate(&json!({ "inline_string": "{{key}}" })) }),
        )
        .await;
    assert_eq!(template.status, 422, "{}", template.body);

    let on_the_proxy =
        cluster_with_client_certificate(&json!({ "filename": "/etc/envoy/client.key" }));
    let created = app.post(&format!("{BASE}/clusters"), &on_the_proxy).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let shown = app.get(&format!("{BASE}/clusters/mtls-upstream")).await;
    assert_eq!(
        shown.body["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
            ["private_key"]["filename"],
        "/etc/envoy/client.key",
        "a file on the proxy is a reference, shown as it is"
    );
    assert!(!database_dump(&pool).contains(INLINE));
}

#[test]
fn the_generated_token_secret_and_master_key_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("efms-secrets-{}", Uuid::new_v4()));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/generate-secrets.sh"
    );
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(&dir)
        .status()
        .expect("bash runs");
    assert!(status.success());
    for file in ["jwt-secret", "master-key"] {
        let metadata = std::fs::metadata(dir.join(file)).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{file}");
        assert!(metadata.len() >= 40, "{file} holds a key");
    }
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    std::fs::remove_dir_all(&dir).unwrap();
}
