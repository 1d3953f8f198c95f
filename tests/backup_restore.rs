//! Backup and restore (`scripts/backup.sh`, `scripts/restore.sh`) and `efms verify`: a backup
//! restored into an empty database, after more writes and a tenant's purge, answers as the
//! database did when it was taken (time travel included), brings no purged tenant back, and
//! verifies; a read model tampered with fails verification, named.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use efms_tests::fleet::eventually;
use efms_tests::replica::efms_binary;
use efms_tests::TestApp;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(30);

fn cluster(name: &str, timeout: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": timeout })
}

fn url(database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{database}")
}

fn run_script(name: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .expect("the script runs")
}

fn script(name: &str, args: &[&str]) -> Output {
    let output = run_script(name, args);
    assert!(
        output.status.success(),
        "{name}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn verify(database: &str) -> Output {
    Command::new(efms_binary())
        .arg("verify")
        .env("DATABASE_URL", url(database))
        .env("EFMS_LOG", "info")
        .output()
        .expect("efms verify runs")
}

/// What the API answers of acme: its clusters now, its revisions, and a cluster as of its first
/// revision.
async fn acme_as_seen(app: &TestApp) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in [
        "/api/v1/tenants/acme/clusters",
        "/api/v1/tenants/acme/revisions",
        "/api/v1/tenants/acme/clusters/a?revision=1",
        "/api/v1/tenants/acme/history",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        seen.push(answer.body);
    }
    seen
}

#[sqlx::test(migrations = "../migrations")]
async fn a_restored_backup_answers_as_when_it_was_taken_keeps_purged_tenants_gone_and_verifies(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.set_purge_grace(Duration::from_secs(1));
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("gone", "Gone").await;
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/tenants/acme/clusters",
            cluster("a", "1s"),
        ),
        (
            Method::PUT,
            "/api/v1/tenants/acme/clusters/a",
            cluster("a", "2s"),
        ),
        (
            Method::POST,
            "/api/v1/tenants/acme/clusters",
            cluster("b", "1s"),
        ),
        (
            Method::POST,
            "/api/v1/tenants/gone/clusters",
            cluster("g", "1s"),
        ),
    ] {
        let answer = app
            .send(method, path, Some(("application/json", &body)), &[])
            .await;
        assert!(answer.status < 300, "{path}: {}", answer.body);
    }
    let at_backup = acme_as_seen(&app).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("efms-backup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let older = dir.join("older.dump");
    script("backup.sh", &[&url(&database), older.to_str().unwrap()]);

    // After the backup: more writes, and a tenant deleted and purged.
    let later = app
        .post("/api/v1/tenants/acme/clusters", &cluster("later", "1s"))
        .await;
    assert_eq!(later.status, 201, "{}", later.body);
    let deleted = app
        .send(Method::DELETE, "/api/v1/tenants/gone", None, &[])
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    eventually(PATIENCE, "gone to be purged", || async {
        let listed = app.get("/api/v1/tenants?include_deleted=true").await.body;
        listed["items"]
            .as_array()?
            .iter()
            .any(|item| item["slug"] == "gone" && item["state"] == "purged")
            .then_some(())
    })
    .await;
    let newer = dir.join("newer.dump");
    script("backup.sh", &[&url(&database), newer.to_str().unwrap()]);

    // The older backup into an empty database, told of the purges since.
    let restored = format!("efms_restored_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {restored}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {restored} TEMPLATE template0"))
        .execute(&pool)
        .await
        .unwrap();
    let deletions = format!("{}.deletions.csv", newer.display());
    script(
        "restore.sh",
        &[
            older.to_str().unwrap(),
            &url(&restored),
            "--deletions",
            &deletions,
        ],
    );
    let verified = verify(&restored);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );

    let restored_pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url(&restored))
        .await
        .unwrap();
    {
        let back = TestApp::spawn(restored_pool.clone()).await;
        assert_eq!(acme_as_seen(&back).await, at_backup);
        let later = back.get("/api/v1/tenants/acme/clusters/later").await;
        assert_eq!(
            later.status, 404,
            "written after the backup: {}",
            later.body
        );
        let gone = back.get("/api/v1/tenants/gone/clusters").await;
        assert_eq!(gone.status, 410, "purged after the backup: {}", gone.body);
        let listed = back.get("/api/v1/tenants?include_deleted=true").await.body;
        let gone = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["slug"] == "gone")
            .unwrap_or_else(|| panic!("{listed}"));
        assert_eq!(gone["state"], "purged", "{gone}");
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e JOIN tenant_deletions d USING (tenant_id)",
        )
        .fetch_one(&restored_pool)
        .await
        .unwrap();
        assert_eq!(events, 0, "no event of a purged tenant came back");
        let reused = back
            .post(
                "/api/v1/tenants",
                &json!({ "slug": "gone", "name": "Again" }),
            )
            .await;
        assert_eq!(reused.status, 409, "{}", reused.body);
    }

    // A read model changed behind the log's back fails verification, named.
    sqlx::query(
        "UPDATE config_resources SET document = jsonb_set(document, '{connect_timeout}', '\"9s\"')
         WHERE name = 'b'",
    )
    .execute(&restored_pool)
    .await
    .unwrap();
    let failed = verify(&restored);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("config_resources"), "{said}");
    assert!(
        said.contains("differ from their rebuild from the log: config"),
        "{said}"
    );
    restored_pool.close().await;
    sqlx::query(&format!("DROP DATABASE {restored} WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();

    // A cluster whose transaction ids are behind the backup's log is refused before anything is
    // restored, and so is a database that is not empty.
    std::fs::write(format!("{}.txid", older.display()), "900000000000").unwrap();
    let behind = run_script("restore.sh", &[older.to_str().unwrap(), &url(&database)]);
    let said = String::from_utf8_lossy(&behind.stderr);
    assert!(
        !behind.status.success() && said.contains("restore into an empty database"),
        "{said}"
    );
    sqlx::query(&format!("CREATE DATABASE {restored} TEMPLATE template0"))
        .execute(&pool)
        .await
        .unwrap();
    let behind = run_script("restore.sh", &[older.to_str().unwrap(), &url(&restored)]);
    let said = String::from_utf8_lossy(&behind.stderr);
    assert!(
        !behind.status.success() && said.contains("behind"),
        "{said}"
    );
    let tables: i64 = {
        let empty = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url(&restored))
            .await
            .unwrap();
        let tables =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                .fetch_one(&empty)
                .await
                .unwrap();
        empty.close().await;
        tables
    };
    assert_eq!(tables, 0, "nothing was restored");
    sqlx::query(&format!("DROP DATABASE {restored} WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
