//! A real Prometheus (Debian's package, installed by `scripts/install-prometheus.sh`) scrapes a
//! running efms (INT-MN-002): its query API answers efms's own series, the alerting rules
//! shipped in `deploy/prometheus` load and evaluate against them without error, and every query
//! of the Grafana dashboards in `deploy/grafana` parses and names only series that exist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use efms_tests::fleet::{eventually, free_port};
use efms_tests::TestApp;
use serde_json::Value;
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(60);

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second and evaluating the rules
    /// of `rules` every second.
    fn start(target: &str, rules: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("efms-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: efms\n    static_configs:\n      - targets: ['{target}']\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed: run scripts/install-prometheus.sh");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// The `data` of an answer of the query API at `path`, once Prometheus answers.
    async fn api(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        answer(http, &format!("{}{path}", self.base))
            .await
            .filter(|answer| answer["status"] == "success")
            .map(|answer| answer["data"].clone())
    }

    /// Prometheus's answer to the instant query `expr`: `status` and `data`, or `error`.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Value {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.base)).unwrap();
        url.query_pairs_mut().append_pair("query", expr);
        answer(http, url.as_str()).await.unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_real_prometheus_scrapes_efms_and_evaluates_the_shipped_alert_rules(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let target = app.base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target, &rules_path());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let target_state = eventually(PATIENCE, "efms to be scraped", || async {
        let targets = prometheus.api(&http, "/api/v1/targets").await?;
        let active = targets["activeTargets"].as_array()?.first()?.clone();
        (active["health"] == "up").then_some(active)
    })
    .await;
    assert_eq!(target_state["labels"]["job"], "efms", "{target_state}");

    // The tenant's creation is one of efms's own series, labelled by route template and status.
    let created = eventually(PATIENCE, "the creation's request series", || async {
        let query = "/api/v1/query?query=efms_http_requests_total%7Broute%3D%22%2Fapi%2Fv1%2Ftenants%22%2Cmethod%3D%22POST%22%7D";
        let data = prometheus.api(&http, query).await?;
        data["result"].as_array()?.first().cloned()
    })
    .await;
    assert_eq!(created["metric"]["status"], "201", "{created}");
    assert_eq!(created["metric"]["job"], "efms", "{created}");
    assert!(
        created["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 1.0,
        "{created}"
    );

    // Every shipped rule is loaded and evaluated, and none fails to evaluate.
    let groups = eventually(PATIENCE, "every rule to be evaluated", || async {
        let data = prometheus.api(&http, "/api/v1/rules").await?;
        let groups = data["groups"].as_array()?.clone();
        let evaluated = groups
            .iter()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
            .all(|rule| rule["health"] != "unknown");
        (!groups.is_empty() && evaluated).then_some(groups)
    })
    .await;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    let shipped = std::fs::read_to_string(rules_path()).unwrap();
    assert_eq!(
        rules.len(),
        shipped.matches("- alert:").count(),
        "every shipped rule is loaded"
    );
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}

/// The JSON answer at `url`, if any.
async fn answer(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

#[sqlx::test(migrations = "../migrations")]
async fn every_dashboard_query_parses_in_prometheus_and_names_series_efms_exports(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let exported = app.metrics_text().await;
    let prometheus = Prometheus::start("127.0.0.1:1", &rules_path());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually(PATIENCE, "Prometheus to answer", || async {
        prometheus.api(&http, "/api/v1/status/buildinfo").await
    })
    .await;

    let dashboards = dashboards();
    assert_eq!(dashboards.len(), 3, "fleet, proxies and routes");
    for (file, dashboard) in &dashboards {
        for field in ["uid", "title", "schemaVersion", "panels", "templating"] {
            assert!(!dashboard[field].is_null(), "{file}: no `{field}`");
        }
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file}: no panel");
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            let grid = &panel["gridPos"];
            assert!(
                ["x", "y", "w", "h"].iter().all(|k| grid[k].is_u64()),
                "{file}: panel `{title}` has no grid position"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: `{title}`"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(
                !targets.is_empty(),
                "{file}: panel `{title}` queries nothing"
            );
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                assert!(
                    expr.contains("efms_") || expr.contains("envoy_"),
                    "{file}: `{title}` reads neither efms's nor Envoy's series"
                );
                // Grafana's own variable, as Grafana would put it in.
                let query = expr.replace("$__rate_interval", "1m");
                let answer = prometheus.query(&http, &query).await;
                assert_eq!(answer["status"], "success", "{file}: `{title}`: {answer}");
                for family in efms_families(expr) {
                    assert!(
                        exported.contains(&format!("# TYPE {family} ")),
                        "{file}: `{title}` reads `{family}`, which efms does not export"
                    );
                }
            }
        }
    }
}

/// The dashboards shipped for Grafana, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut files: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let dashboard = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{name} is not JSON: {error}"));
            (name, dashboard)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// The efms metric families an expression reads: `efms_commands_total` is a sample of family
/// `efms_commands`, `efms_xds_push_latency_seconds_bucket` one of `efms_xds_push_latency_seconds`.
fn efms_families(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("efms_"))
        .map(|word| {
            word.strip_suffix("_total")
                .or_else(|| word.strip_suffix("_bucket"))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

/// The alerting rules shipped for Prometheus.
fn rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/efms-alerts.yml")
}
