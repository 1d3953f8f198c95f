//! Secret material at rest (NFR-SE-003) against a real Postgres: private keys are sealed with the
//! tenant's data key before they are stored, whatever path writes them, and the data keys move to
//! a new master key without touching the sealed secrets.

use efms_commands::keys::rewrap;
use efms_commands::Keyring;
use efms_domain::secrets::{open_document, Key};
use efms_tests::{fixture, TestApp, MASTER_KEY};
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

    let database = pool.connect_options().get_database().unwrap().to_owned();
    let dump = std::process::Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--data-only",
            &database,
        ])
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("MIIBszCCAVmgAwIBAgIUEXAMPLE"),
        "the certificate is public and stored"
    );
    assert!(
        dump.contains("efms:enc:v1:k1:"),
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
