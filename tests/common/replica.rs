//! `efms serve` as a process of its own, for the tests that kill a replica outright.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::PgPool;

use crate::fleet::{eventually, free_port};

/// The `efms` binary the tests run: `EFMS_BIN`, else the debug build in the target directory
/// (`scripts/test.sh` builds it before the tests).
pub fn efms_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EFMS_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the tests crate is in the workspace")
                .join("target")
        },
        PathBuf::from,
    );
    let path = target.join("debug").join("efms");
    assert!(
        path.exists(),
        "no efms binary at {}: build it with `cargo build --bin efms` or set EFMS_BIN",
        path.display()
    );
    path
}

/// A running `efms serve` on the database of `pool`, with the test secret and master key; killed
/// when dropped.
pub struct ServeProcess {
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT` of its gRPC listener, as it announces itself.
    pub grpc: String,
    /// Its environment, to start it again as it was.
    environment: Vec<(String, String)>,
}

impl ServeProcess {
    /// Starts a replica whose lease lasts `lease` (such as `2s`), and waits until it answers.
    pub async fn start(pool: &PgPool, lease: &str) -> Self {
        Self::start_with(pool, lease, &[]).await
    }

    /// Starts a replica as [`Self::start`] does, with `settings` added to its environment.
    pub async fn start_with(pool: &PgPool, lease: &str, settings: &[(&str, &str)]) -> Self {
        let options = pool.connect_options();
        let database = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().expect("a test database has a name")
        );
        let (http, grpc) = (free_port(), free_port());
        let mut environment: Vec<(String, String)> = [
            ("DATABASE_URL", database),
            ("EFMS_HTTP_ADDR", format!("127.0.0.1:{http}")),
            ("EFMS_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
            (
                "EFMS_JWT_SECRET",
                std::str::from_utf8(crate::SECRET).unwrap().to_owned(),
            ),
            ("EFMS_MASTER_KEY", crate::MASTER_KEY.to_owned()),
            ("EFMS_REPLICA_LEASE", lease.to_owned()),
            ("EFMS_POLL_INTERVAL_MS", "50".to_owned()),
            ("EFMS_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        environment.extend(
            settings
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        let log = std::env::temp_dir().join(format!("efms-serve-{}.log", uuid::Uuid::new_v4()));
        let scheme = if settings.iter().any(|(name, _)| *name == "EFMS_TLS_CERT") {
            "https"
        } else {
            "http"
        };
        let replica = Self {
            child: spawn(&environment, &log),
            log,
            base: format!("{scheme}://127.0.0.1:{http}"),
            grpc: format!("127.0.0.1:{grpc}"),
            environment,
        };
        replica.answering().await;
        replica
    }

    async fn answering(&self) {
        // Over TLS, whatever certificate it serves: the tests that serve one check it themselves.
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let health = format!("{}/healthz", self.base);
        eventually(Duration::from_secs(60), "efms serve to answer", || async {
            let answer = client.get(&health).send().await.ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
    }

    /// Stops the process as an operator does (SIGTERM) and waits for it to exit: it finishes its
    /// in-flight requests first. Answers how it exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM is delivered");
        self.child.wait().expect("the stopped replica is reaped")
    }

    /// Sends it the signal `name` (such as `HUP`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{name} is delivered");
    }

    /// Starts it again, on the same addresses and settings, once it has exited; waits until it
    /// answers. Its log goes on in the same file.
    pub async fn start_again(&mut self) {
        self.child = spawn(&self.environment, &self.log);
        self.answering().await;
    }

    /// Kills the process outright (SIGKILL): it records nothing on its way out.
    pub fn kill(&mut self) {
        self.child.kill().expect("the replica is killed");
        self.child.wait().expect("the killed replica is reaped");
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Spawns `efms serve` with `environment`, appending its log to `log`.
fn spawn(environment: &[(String, String)], log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(efms_binary())
        .arg("serve")
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("efms serve starts")
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- efms serve log ---\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Waits until the replica announcing `grpc` holds a current lease.
pub async fn leased(pool: &PgPool, grpc: &str) {
    eventually(Duration::from_secs(60), "the replica's lease", || async {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1::bigint FROM xds_replicas WHERE advertised = $1 AND expires_at > now()",
        )
        .bind(grpc)
        .fetch_optional(pool)
        .await
        .unwrap();
        found.map(|_| ())
    })
    .await;
}

/// The bootstrap of proxy `node` of group `edge` of tenant `acme`, handed out by `replica` to
/// the holder of `token`.
pub async fn bootstrap_from(replica: &ServeProcess, token: &str, node: &str) -> serde_json::Value {
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/tenants/acme/groups/edge/bootstrap?node_id={node}&admin_port={}",
            replica.base,
            free_port()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}
