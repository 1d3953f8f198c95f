//! Deploying efms (DPL-001/002): the image `scripts/efms-image.sh` builds with no registry, run
//! on a real Docker engine as `docker-compose.yml` runs it (secrets from files, TLS on): healthy
//! by its own probe, answering writes, stopping cleanly; the compose file checked by
//! `docker-compose` itself; and the `.dockerignore` that keeps build output, tools and secrets out
//! of every build context.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use efms_tests::docker::Engine;
use efms_tests::fleet::{eventually, free_port};
use efms_tests::replica::efms_binary;
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

/// Makes what docker-compose.yml reads from files into `dir`, by the script it names.
fn compose_secrets(dir: &Path) {
    let made = Command::new(root().join("scripts/compose-secrets.sh"))
        .arg(dir)
        .output()
        .expect("scripts/compose-secrets.sh runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_image_serves_over_tls_with_its_secrets_from_files_is_healthy_and_stops_cleanly(
    pool: PgPool,
) {
    let Some(engine) = Engine::start("efms-image") else {
        panic!("a Docker engine is needed (scripts/install-docker.sh)");
    };
    let _emptied = engine.emptied_after();
    let tag = efms_image(&engine);
    // What docker-compose.yml mounts at /run/secrets, made by the script it names.
    let secrets = std::env::temp_dir().join(format!("efms-secrets-{}", uuid::Uuid::new_v4()));
    compose_secrets(&secrets);
    let options = pool.connect_options();
    let (http_port, grpc_port) = (free_port(), free_port());
    // The efms service's settings in docker-compose.yml, on the host's network.
    let environment = [
        format!(
            "DATABASE_URL=postgres://{}@127.0.0.1:{}/{}",
            options.get_username(),
            options.get_port(),
            options.get_database().unwrap()
        ),
        "EFMS_DATABASE_PASSWORD_FILE=/run/secrets/postgres-password".to_owned(),
        "EFMS_JWT_SECRET_FILE=/run/secrets/jwt-secret".to_owned(),
        "EFMS_MASTER_KEY_FILE=/run/secrets/master-key".to_owned(),
        "EFMS_TLS_CERT=/run/secrets/tls-chain.pem".to_owned(),
        "EFMS_TLS_KEY=/run/secrets/tls-key.pem".to_owned(),
        format!("EFMS_HTTP_ADDR=127.0.0.1:{http_port}"),
        format!("EFMS_GRPC_ADDR=127.0.0.1:{grpc_port}"),
    ];
    // Compose mounts each secret as a file of its own under /run/secrets.
    let mounts: Vec<String> = [
        "postgres-password",
        "jwt-secret",
        "master-key",
        "tls-chain.pem",
        "tls-key.pem",
    ]
    .iter()
    .map(|name| format!("{}:/run/secrets/{name}:ro", secrets.join(name).display()))
    .collect();
    let mut run = vec!["run", "--detach", "--name", "efms", "--network", "host"];
    for mount in &mounts {
        run.extend(["--volume", mount.as_str()]);
    }
    for variable in &environment {
        run.extend(["--env", variable.as_str()]);
    }
    run.push(&tag);
    engine.docker(&run);
    assert_eq!(
        engine.docker(&["inspect", "--format", "{{.Config.User}}", "efms"]),
        "10001:10001",
        "efms runs unprivileged"
    );

    // The image's health check is `efms probe`: /readyz over TLS, trusting the chain's CA.
    eventually(PATIENCE, "the container's health check to pass", || async {
        let health = engine.docker(&["inspect", "--format", "{{.State.Health.Status}}", "efms"]);
        assert_ne!(
            health,
            "unhealthy",
            "{}",
            engine.docker(&["inspect", "--format", "{{json .State}}", "efms"])
        );
        (health == "healthy").then_some(())
    })
    .await;

    // It is the real server: a write over TLS, with a token signed by the secret from its file,
    // lands in the database the test holds.
    let read = |name: &str| std::fs::read_to_string(secrets.join(name)).unwrap();
    let signing = efms_api::settings::validate_secret(Some(&read("jwt-secret"))).unwrap();
    let token = efms_api::JwtKeys::from_secret(&signing)
        .issue(
            "tester",
            efms_domain::Role::System,
            None,
            Duration::from_secs(600),
        )
        .unwrap();
    let ca = reqwest::Certificate::from_pem(read("ca.pem").as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let created = client
        .post(format!("https://127.0.0.1:{http_port}/api/v1/tenants"))
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
        engine.docker(&["inspect", "--format", "{{json .State}}", "efms"])
    );
    std::fs::remove_dir_all(&secrets).unwrap();
}

#[test]
fn the_compose_file_is_valid_and_reads_every_secret_from_a_file() {
    assert!(
        Engine::start("efms-context").is_some(),
        "Docker and docker-compose are needed (scripts/install-docker.sh)"
    );
    let dir = std::env::temp_dir().join(format!("efms-compose-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root().join("docker-compose.yml"),
        dir.join("docker-compose.yml"),
    )
    .unwrap();
    let secrets = dir.join(".efms/compose");
    compose_secrets(&secrets);
    // What an operator writes once a VM and a group exist.
    std::fs::write(secrets.join("agent-token"), "token").unwrap();
    std::fs::write(secrets.join("envoy-bootstrap.json"), "{}").unwrap();
    let config = Command::new("docker-compose")
        .args(["--profile", "fleet", "config"])
        .current_dir(&dir)
        .output()
        .expect("docker-compose runs (scripts/install-docker.sh)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
    let resolved = String::from_utf8_lossy(&config.stdout).into_owned();
    for service in ["postgres:", "efms:", "agent:", "envoy:"] {
        assert!(
            resolved.contains(&format!("\n  {service}\n")),
            "{service} {resolved}"
        );
    }
    for setting in [
        "POSTGRES_PASSWORD_FILE: /run/secrets/postgres-password",
        "EFMS_DATABASE_PASSWORD_FILE: /run/secrets/postgres-password",
        "EFMS_JWT_SECRET_FILE: /run/secrets/jwt-secret",
        "EFMS_MASTER_KEY_FILE: /run/secrets/master-key",
        "EFMS_TLS_CERT: /run/secrets/tls-chain.pem",
        "EFMS_AGENT_CA_FILE: /run/secrets/ca.pem",
    ] {
        assert!(resolved.contains(setting), "{setting} in {resolved}");
    }
    for literal in [
        "POSTGRES_PASSWORD:",
        "EFMS_JWT_SECRET:",
        "EFMS_MASTER_KEY:",
        "postgres:efms@",
    ] {
        assert!(
            !resolved.contains(literal),
            "no secret is written in: {literal}"
        );
    }
    assert_eq!(
        resolved.matches("healthcheck:").count(),
        3,
        "postgres, efms, envoy"
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
