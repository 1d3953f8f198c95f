//! Limits on what is written, against a real Postgres and the real server: a JSON Patch or a
//! template that would build an oversized document is refused while it is applied, naming the
//! limit; a tenant runs a bounded number of bulk jobs; names no resource can have never reach the
//! resource cache.

use efms_domain::TenantSlug;
use efms_tests::TestApp;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

/// A valid cluster whose metadata (a protobuf `Struct`, any JSON) holds 256 bytes under `a`.
fn cluster_with_metadata(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
        "metadata": { "filter_metadata": { "a": { "v": "x".repeat(240) } } } })
}

/// `copies` operations that each copy `/metadata/filter_metadata/a` into itself, doubling it:
/// 14 copies of 256 bytes make 4 MiB, four times the default limit on a document.
fn doubling_copies(copies: usize) -> Value {
    json!((0..copies)
        .map(
            |i| json!({ "op": "copy", "from": "/metadata/filter_metadata/a",
                         "path": format!("/metadata/filter_metadata/a/k{i}") })
        )
        .collect::<Vec<_>>())
}

async fn app_with_cluster(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let created = app
        .post(&format!("{BASE}/clusters"), &cluster_with_metadata("c"))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    app
}

async fn json_patch(app: &TestApp, path: &str, operations: &Value) -> efms_tests::Answer {
    app.send(
        Method::PATCH,
        path,
        Some(("application/json-patch+json", operations)),
        &[],
    )
    .await
}

/// The cluster `c` is as it was created, at its first version, in the first revision.
async fn assert_unchanged(app: &TestApp) {
    let stored = app.get(&format!("{BASE}/clusters/c")).await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.header("etag"), "\"1\"");
    assert_eq!(
        stored.body["metadata"],
        cluster_with_metadata("c")["metadata"]
    );
    let head = app.get(&format!("{BASE}/revisions?limit=1")).await;
    assert_eq!(head.body["items"][0]["revision"], 1, "{}", head.body);
}

fn first_error(answer: &efms_tests::Answer) -> (&str, &str) {
    let error = &answer.body["errors"][0];
    (
        error["pointer"].as_str().unwrap_or_default(),
        error["detail"].as_str().unwrap_or_default(),
    )
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_json_patch_of_doubling_copies_is_refused_naming_the_document_limit_and_stores_nothing(
    pool: PgPool,
) {
    let app = app_with_cluster(pool).await;
    let answer = json_patch(&app, &format!("{BASE}/clusters/c"), &doubling_copies(14)).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let (pointer, detail) = first_error(&answer);
    // 256 bytes doubled twelve times pass 1 MiB: the copy that would do it is named.
    assert!(pointer.starts_with('/') && pointer[1..].parse::<usize>().is_ok_and(|i| i < 14));
    assert!(detail.contains("1048576 bytes"), "{detail}");
    assert!(detail.contains("EFMS_MAX_DOCUMENT_BYTES"), "{detail}");
    assert_unchanged(&app).await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bulk_patch_of_doubling_copies_is_refused_naming_the_document_limit_and_stores_nothing(
    pool: PgPool,
) {
    let app = app_with_cluster(pool).await;
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [
                { "op": "patch", "kind": "clusters", "name": "c", "patch": doubling_copies(14) }
            ] }),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let (pointer, detail) = first_error(&answer);
    assert!(pointer.starts_with("/operations/0/patch/"), "{pointer}");
    assert!(detail.contains("1048576 bytes"), "{detail}");
    assert!(detail.contains("EFMS_MAX_DOCUMENT_BYTES"), "{detail}");
    assert_unchanged(&app).await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_patch_of_more_operations_than_the_limit_is_refused_naming_it(pool: PgPool) {
    let app = app_with_cluster(pool).await;
    // Harmless operations, each of which applies: only their number is at fault.
    let tests: Vec<Value> = (0..1_001)
        .map(|_| json!({ "op": "test", "path": "/connect_timeout", "value": "1s" }))
        .collect();
    let answer = json_patch(&app, &format!("{BASE}/clusters/c"), &json!(tests)).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let (_, detail) = first_error(&answer);
    assert!(detail.contains("1001 operations"), "{detail}");
    assert!(detail.contains("limit is 1000"), "{detail}");
    assert!(detail.contains("EFMS_MAX_PATCH_OPERATIONS"), "{detail}");
    assert_unchanged(&app).await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_template_that_renders_past_the_limit_is_refused_naming_the_template_and_the_limit(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    // 2,000 copies of one parameter: a 2 KiB value renders 4 MiB.
    let template = json!({
        "name": "echo",
        "kind": "cluster",
        "parameters": { "blob": {} },
        "body": { "type": "STATIC", "connect_timeout": "1s",
            "metadata": { "filter_metadata": { "x": { "items": vec!["{{blob}}"; 2_000] } } } }
    });
    let created = app.post(&format!("{BASE}/templates"), &template).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let small = app
        .post(
            &format!("{BASE}/clusters"),
            &json!({ "$template": { "template": "echo", "name": "small", "parameters": { "blob": "b" } } }),
        )
        .await;
    assert_eq!(small.status, 201, "{}", small.body);

    let declared = app
        .post(
            &format!("{BASE}/clusters"),
            &json!({ "$template": { "template": "echo", "name": "big",
                                    "parameters": { "blob": "b".repeat(2_048) } } }),
        )
        .await;
    assert_eq!(declared.status, 422, "{}", declared.body);
    let (_, detail) = first_error(&declared);
    assert!(detail.contains("template `echo`"), "{detail}");
    assert!(detail.contains("1048576 bytes"), "{detail}");
    assert_eq!(app.get(&format!("{BASE}/clusters/big")).await.status, 404);
}

/// Records `count` bulk jobs of `slug` as running (their progress just recorded), as jobs that
/// are validating a large request are.
async fn running_jobs(pool: &PgPool, slug: &str, count: usize) -> Vec<uuid::Uuid> {
    let tenant_id = TenantSlug::parse(slug).unwrap().tenant_id();
    let mut ids = Vec::new();
    for _ in 0..count {
        let job_id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO bulk_jobs (tenant_id, job_id, branch, actor, state, total)
             VALUES ($1, $2, 'main', 'tester', 'validating', 5000)",
        )
        .bind(tenant_id)
        .bind(job_id)
        .execute(pool)
        .await
        .unwrap();
        ids.push(job_id);
    }
    ids
}

/// A bulk request large enough to run as a job.
fn job_request() -> Value {
    json!({ "operations": (0..1_001)
        .map(|i| json!({ "op": "delete", "kind": "clusters", "name": format!("gone-{i}") }))
        .collect::<Vec<_>>() })
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_third_bulk_job_of_a_tenant_is_refused_while_two_run(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("beta", "Beta").await;
    let held = running_jobs(&pool, "acme", 2).await;

    let refused = app.post(&format!("{BASE}/bulk"), &job_request()).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused
        .header("retry-after")
        .parse::<u32>()
        .is_ok_and(|s| s > 0));
    let detail = refused.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("limit is 2"), "{detail}");
    assert!(detail.contains("EFMS_MAX_JOBS_PER_TENANT"), "{detail}");

    // The limit is the tenant's own: another tenant starts its job.
    let other = app.post("/api/v1/tenants/beta/bulk", &job_request()).await;
    assert_eq!(other.status, 202, "{}", other.body);

    // Once one of the two has finished, there is room again.
    sqlx::query("UPDATE bulk_jobs SET state = 'succeeded', finished_at = now() WHERE job_id = $1")
        .bind(held[0])
        .execute(&pool)
        .await
        .unwrap();
    let started = app.post(&format!("{BASE}/bulk"), &job_request()).await;
    assert_eq!(started.status, 202, "{}", started.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_name_no_resource_can_have_is_answered_without_a_cache_entry(pool: PgPool) {
    let app = app_with_cluster(pool).await;
    let before = app.cache.stats();
    // Near the longest a URL can carry (64 KiB).
    let huge = "n".repeat(60_000);
    let answer = app.get(&format!("{BASE}/clusters/{huge}")).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(!answer.body.to_string().contains(&huge));
    assert_eq!(app.cache.stats(), before);

    let prefix = app
        .get(&format!("{BASE}/clusters?name_prefix={}", "p".repeat(300)))
        .await;
    assert_eq!(prefix.status, 422, "{}", prefix.body);
    assert_eq!(prefix.body["errors"][0]["parameter"], "name_prefix");
    let cursor = app
        .get(&format!("{BASE}/clusters?cursor={}", "p".repeat(300)))
        .await;
    assert_eq!(cursor.status, 422, "{}", cursor.body);
    assert_eq!(app.cache.stats(), before);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_cache_counts_the_bytes_of_the_names_it_keeps(pool: PgPool) {
    let app = app_with_cluster(pool).await;
    let before = app.cache.stats();
    // The longest name there can be, and no such cluster: its absence is kept, name and all.
    let longest = "m".repeat(253);
    let answer = app.get(&format!("{BASE}/clusters/{longest}")).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let after = app.cache.stats();
    assert_eq!(after.entries, before.entries + 1);
    assert!(
        after.entry_bytes >= before.entry_bytes + 253,
        "{before:?} {after:?}"
    );

    let page = app
        .get(&format!("{BASE}/clusters?name_prefix={longest}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let listed = app.cache.stats();
    assert_eq!(listed.pages, after.pages + 1);
    assert!(listed.page_bytes >= after.page_bytes + 253, "{listed:?}");
}
