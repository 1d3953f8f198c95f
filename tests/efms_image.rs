//! The efms image (DPL-001), built with no registry by `scripts/efms-image.sh` and run on a real
//! Docker engine: `efms serve` against the local Postgres, healthy by its own probe, answering
//! writes, stopping cleanly; and the `.dockerignore` that keeps build output, tools and secrets
//! out of every build context.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use efms_tests::docker::Engine;
use efms_tests::fleet::{eventually, free_port};
use efms_tests::replica::efms_binary;
use efms_tests::{MASTER_KEY, SECRET};
use serde_json::json;
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(90);

/// The checkout's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Builds (or finds) the image of the binary the tests run, loads it into `engine`; its tag.
fn efms_image(engine: &Engine) -> String {
    let built = Command::new(root().join("scripts/efms-image.sh"))
        .arg(efms_binary())
        .output()
        .expect("scripts/efms-image.sh runs");
    assert!(
        built.status.success(),
        "scripts/efms-image.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let tar = root().join(".tools/docker/efms/efms.tar");
    engine.docker(&["load", "--quiet", "--input", tar.to_str().unwrap()]);
    String::from_utf8_lossy(&built.stdout).trim().to_owned()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_image_serves_against_the_local_postgres_reports_itself_healthy_and_stops_cleanly(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("efms-image") else {
        panic!("a Docker engine is needed (scripts/install-docker.sh)");
    };
    let _emptied = engine.emptied_after();
    let tag = efms_image(&engine);
    let options = pool.connect_options();
    let database = format!(
        "DATABASE_URL=postgres://{}@127.0.0.1:{}/{}",
        options.get_username(),
        options.get_port(),
        options.get_database().unwrap()
    );
    let (http_port, grpc_port) = (free_port(), free_port());
    let http = format!("EFMS_HTTP_ADDR=127.0.0.1:{http_port}");
    let grpc = format!("EFMS_GRPC_ADDR=127.0.0.1:{grpc_port}");
    let secret = format!("EFMS_JWT_SECRET={}", std::str::from_utf8(SECRET).unwrap());
    let master = format!("EFMS_MASTER_KEY={MASTER_KEY}");
    engine.docker(&[
        "run",
        "--detach",
        "--name",
        "efms",
        "--network",
        "host",
        "--env",
        &database,
        "--env",
        &http,
        "--env",
        &grpc,
        "--env",
        &secret,
        "--env",
        &master,
        &tag,
    ]);
    assert_eq!(
        engine.docker(&["inspect", "--format", "{{.Config.User}}", "efms"]),
        "10001:10001",
        "efms runs unprivileged"
    );

    eventually(PATIENCE, "the container's health check to pass", || async {
        let health = engine.docker(&["inspect", "--format", "{{.State.Health.Status}}", "efms"]);
        assert_ne!(health, "unhealthy", "{}", engine.docker(&["logs", "efms"]));
        (health == "healthy").then_some(())
    })
    .await;

    // It is the real server: a write through it lands in the database the test holds.
    let token = efms_api::JwtKeys::from_secret(SECRET)
        .issue(
            "tester",
            efms_domain::Role::System,
            None,
            Duration::from_secs(600),
        )
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let created = client
        .post(format!("http://127.0.0.1:{http_port}/api/v1/tenants"))
        .bearer_auth(&token)
        .json(&json!({ "slug": "acme", "name": "Acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE slug = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // `docker stop` sends SIGTERM: the server drains and exits 0 well before the engine's kill.
    engine.docker(&["stop", "--time", "30", "efms"]);
    assert_eq!(
        engine.docker(&["inspect", "--format", "{{.State.ExitCode}}", "efms"]),
        "0",
        "{}",
        engine.docker(&["logs", "efms"])
    );
}

#[test]
fn a_build_context_carries_neither_build_output_nor_tools_nor_local_secrets() {
    let Some(engine) = Engine::start("efms-context") else {
        panic!("a Docker engine is needed (scripts/install-docker.sh)");
    };
    let _emptied = engine.emptied_after();
    let context = std::env::temp_dir().join(format!("efms-context-{}", uuid::Uuid::new_v4()));
    let kept = [
        "Cargo.toml",
        "api/src/main.rs",
        "migrations/0001.sql",
        "docs/README.md",
    ];
    let left_out = [
        "target/debug/efms",
        "api/target/release/efms",
        ".tools/envoy/envoy",
        ".efms/master.key",
        ".efms/jwt-secret",
        ".git/HEAD",
        "efms.log",
        "backups/efms.dump",
        "backups/efms.dump.deletions.csv",
        "tls/server.pem",
    ];
    for file in kept.iter().chain(&left_out) {
        let path = context.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, file).unwrap();
    }
    std::fs::copy(root().join(".dockerignore"), context.join(".dockerignore")).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY . /context/\n",
    )
    .unwrap();

    let tag = "efms-test/context:latest";
    let built = Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--tag", tag])
        .arg(&context)
        .output()
        .expect("docker build runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let container = engine.docker(&["create", tag, "/none"]);
    let exported = Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", &engine.host)
        .args(["export", &container])
        .output()
        .expect("docker export runs");
    let listing = Command::new("tar")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut tar| {
            use std::io::Write as _;
            tar.stdin.take().unwrap().write_all(&exported.stdout)?;
            tar.wait_with_output()
        })
        .unwrap();
    let files = String::from_utf8_lossy(&listing.stdout).into_owned();
    std::fs::remove_dir_all(&context).unwrap();
    for file in kept {
        assert!(
            files.contains(&format!("context/{file}")),
            "{file} is sent: {files}"
        );
    }
    for file in left_out {
        assert!(
            !files.contains(&format!("context/{file}")),
            "{file} is left out: {files}"
        );
    }
}
