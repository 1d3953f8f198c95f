//! The `efms` binary as a user runs it: start-up checks, tokens, serving and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "cli-test-secret-cli-test-secret-0123";
const MASTER_KEY: &str = "Y2xpLXRlc3QtbWFzdGVyLWtleS0wMTIzNDU2Nzg5YWI=";

fn efms() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_efms"));
    command
        .env_remove("EFMS_JWT_SECRET")
        .env_remove("EFMS_MASTER_KEY")
        .env_remove("EFMS_HTTP_ADDR")
        .env_remove("EFMS_GRPC_ADDR");
    command
}

#[test]
fn serve_without_a_master_key_stops_naming_the_setting() {
    let output = efms()
        .args(["serve"])
        .env("EFMS_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EFMS_MASTER_KEY"), "{stderr}");
}

#[test]
fn serve_with_an_unparseable_address_stops_naming_the_setting() {
    let output = efms()
        .args(["serve"])
        .env("EFMS_JWT_SECRET", SECRET)
        .env("EFMS_HTTP_ADDR", "localhost:80:80")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EFMS_HTTP_ADDR"), "{stderr}");
}

#[test]
fn serve_without_a_secret_stops_naming_the_setting() {
    let output = efms().args(["serve"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EFMS_JWT_SECRET"), "{stderr}");
}

#[test]
fn serve_with_a_malformed_database_url_stops_naming_the_setting() {
    let output = efms()
        .args(["serve", "--database-url", "mysql//nowhere"])
        .env("EFMS_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));
}

#[test]
fn token_prints_a_jwt_the_server_accepts_and_refuses_a_tenant_role_without_tenant() {
    let output = efms()
        .args([
            "token", "--role", "admin", "--tenant", "acme", "--ttl", "5m",
        ])
        .env("EFMS_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let actor = efms_api::JwtKeys::from_secret(SECRET.as_bytes())
        .verify(token.trim())
        .unwrap();
    assert_eq!(actor.role, efms_domain::Role::Admin);
    assert_eq!(actor.tenant.unwrap().as_str(), "acme");

    let refused = efms()
        .args(["token", "--role", "admin"])
        .env("EFMS_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(url: &str, token: Option<&str>) -> Option<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16())
    })
}

#[test]
fn serve_creates_and_migrates_its_database_answers_and_stops_on_sigterm() {
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let base = admin_url.rsplit_once('/').unwrap().0.to_owned();
    let database = format!("efms_cli_{}", std::process::id());
    let (http, grpc) = (free_port(), free_port());
    let mut server = efms()
        .args(["serve"])
        .env("DATABASE_URL", format!("{base}/{database}"))
        .env("EFMS_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("EFMS_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("EFMS_JWT_SECRET", SECRET)
        .env("EFMS_MASTER_KEY", MASTER_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{http}/healthz");
    let started = Instant::now();
    while get(&health, None) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "efms did not start"
        );
        assert!(server.try_wait().unwrap().is_none(), "efms exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tenants = format!("http://127.0.0.1:{http}/api/v1/tenants");
    assert_eq!(get(&tenants, None), Some(401));
    let token = efms()
        .args(["token", "--role", "system"])
        .env("EFMS_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    assert_eq!(get(&tenants, Some(token.trim())), Some(200));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok(),
        "gRPC listens"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "efms exits cleanly on SIGTERM: {status:?}"
    );

    let dropped = Command::new("psql")
        .args([
            &admin_url,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {database}"),
        ])
        .status();
    assert!(dropped.is_ok());
}
