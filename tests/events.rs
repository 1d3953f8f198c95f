//! The tenant event feed, a page at a time (ADR 0014): every commit once, in order, with what it
//! changed; reading on from any event's cursor yields exactly the later ones; a cursor is good for
//! its tenant only, and bad parameters are refused naming them.

use std::time::Duration;

use efms_tests::fleet::eventually;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

fn cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] } })
}

/// The page after `since` (from the start without it).
async fn page(app: &TestApp, base: &str, query: &str) -> Value {
    let answer = app.get(&format!("{base}/events?{query}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The revisions of a page's commits.
fn revisions(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["payload"]["revision"].as_i64().unwrap())
        .collect()
}

/// Waits until the feed from the start holds `count` events; that page.
async fn all_of(app: &TestApp, count: usize) -> Value {
    eventually(
        Duration::from_secs(30),
        "the commits in the feed",
        || async {
            let page = page(app, BASE, "").await;
            (page["items"].as_array().unwrap().len() == count).then_some(page)
        },
    )
    .await
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_feed_lists_each_commit_once_in_order_and_reads_on_from_any_cursor(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    for name in ["a", "b", "c"] {
        let answer = app
            .put(
                &format!("{BASE}/clusters/{name}"),
                &cluster(name),
                &[("x-commit-message", &format!("add {name}"))],
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let first = all_of(&app, 3).await;
    assert_eq!(revisions(&first), [1, 2, 3]);
    let commit = &first["items"][1];
    assert_eq!(commit["type"], "commit");
    assert_eq!(commit["payload"]["branch"], "main");
    assert_eq!(commit["payload"]["message"], "add b");
    assert_eq!(commit["payload"]["operation"], "replace");
    assert_eq!(
        commit["payload"]["changes"],
        json!([{ "kind": "cluster", "name": "b", "change": "created" }])
    );
    assert_eq!(commit["payload"]["changes_total"], 1);
    assert!(commit["payload"]["actor"].is_string(), "{commit}");

    // Nothing after the last one, and the page says to read on from there.
    let next = first["next"].as_str().unwrap().to_owned();
    let empty = page(&app, BASE, &format!("since={next}")).await;
    assert_eq!(revisions(&empty), Vec::<i64>::new());
    assert_eq!(empty["next"], next.as_str());

    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("{BASE}/clusters/b"),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let later = eventually(
        Duration::from_secs(30),
        "the deletion in the feed",
        || async {
            let later = page(&app, BASE, &format!("since={next}")).await;
            (!later["items"].as_array().unwrap().is_empty()).then_some(later)
        },
    )
    .await;
    assert_eq!(revisions(&later), [4]);
    assert_eq!(
        later["items"][0]["payload"]["changes"][0]["change"],
        "deleted"
    );

    // From the first commit's cursor: exactly the three after it.
    let cursor = first["items"][0]["cursor"].as_str().unwrap();
    assert_eq!(
        revisions(&page(&app, BASE, &format!("since={cursor}")).await),
        [2, 3, 4]
    );
    // A page at a time: every commit once.
    let mut seen = Vec::new();
    let mut since = String::new();
    loop {
        let query = if since.is_empty() {
            "limit=1".to_owned()
        } else {
            format!("limit=1&since={since}")
        };
        let one = page(&app, BASE, &query).await;
        if one["items"].as_array().unwrap().is_empty() {
            break;
        }
        seen.extend(revisions(&one));
        since = one["next"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, [1, 2, 3, 4]);
    let only = page(&app, BASE, "types=commit").await;
    assert_eq!(revisions(&only), [1, 2, 3, 4]);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_cursor_of_another_tenant_an_altered_one_or_an_unknown_type_is_refused_naming_it(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("umbrella", "Umbrella").await;
    let answer = app
        .put(&format!("{BASE}/clusters/a"), &cluster("a"), &[])
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let first = all_of(&app, 1).await;
    let cursor = first["items"][0]["cursor"].as_str().unwrap().to_owned();

    let foreign = app
        .get(&format!("/api/v1/tenants/umbrella/events?since={cursor}"))
        .await;
    assert_eq!(foreign.status, 400, "{}", foreign.body);
    assert_eq!(foreign.body["errors"][0]["parameter"], "since");
    let mut altered = cursor.clone().into_bytes();
    altered[6] = if altered[6] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for since in [altered.as_str(), "not-a-cursor", "%00"] {
        let refused = app.get(&format!("{BASE}/events?since={since}")).await;
        assert_eq!(refused.status, 400, "{since}: {}", refused.body);
        assert_eq!(refused.body["errors"][0]["parameter"], "since");
    }
    for (query, parameter) in [
        ("types=commit,nope", "types"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
    ] {
        let refused = app.get(&format!("{BASE}/events?{query}")).await;
        assert_eq!(refused.status, 422, "{query}: {}", refused.body);
        assert_eq!(refused.body["errors"][0]["parameter"], parameter, "{query}");
    }
    // The other tenant's feed holds none of acme's commits.
    let theirs = page(&app, "/api/v1/tenants/umbrella", "").await;
    assert_eq!(theirs["items"], json!([]));
}
