//! The tenant event feed (ADR 0014), a page at a time and live over Server-Sent Events: every
//! commit once, in order, with what it changed; reading on from any event's cursor (or
//! reconnecting with `Last-Event-ID`) yields exactly the later ones; a cursor is good for its
//! tenant only, and bad parameters are refused naming them.

use std::time::Duration;

use efms_domain::Role;
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
async fn a_cursor_of_another_tenant_an_altered_one_one_from_the_future_or_an_unknown_type_is_refused_naming_it(
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
    // Sealed for acme, but ahead of every transaction of this database.
    let acme = efms_domain::TenantSlug::parse("acme").unwrap().tenant_id();
    let future = app.keys.cursors().seal(
        acme,
        efms_domain::feed::FeedPosition {
            tx_id: 1 << 40,
            source: efms_domain::feed::Source::Log,
            position: 1,
        },
    );
    let ahead = app.get(&format!("{BASE}/events?since={future}")).await;
    assert_eq!(ahead.status, 400, "{}", ahead.body);
    assert_eq!(ahead.body["errors"][0]["parameter"], "since");
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

/// An open Server-Sent Events response, read event by event.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    /// Opens the tenant's stream, resuming after `last` when given.
    async fn open(app: &TestApp, last: Option<&str>) -> reqwest::Response {
        let mut request = app
            .client
            .get(app.url(&format!("{BASE}/events/stream")))
            .bearer_auth(app.token(Role::Viewer, Some("acme")));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        request.send().await.unwrap()
    }

    async fn start(app: &TestApp, last: Option<&str>) -> Self {
        let response = Self::open(app, last).await;
        assert_eq!(response.status(), 200);
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event: its id and its data; keep-alive comments are skipped.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(|value| value.trim_start().to_owned())
                };
                if let (Some(id), Some(data)) = (field("id:"), field("data:")) {
                    return (id, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The revisions of the next `count` events, and the last one's id.
    async fn revisions(&mut self, count: usize) -> (Vec<i64>, String) {
        let mut revisions = Vec::new();
        let mut last = String::new();
        for _ in 0..count {
            let (id, data) = self.next().await;
            assert_eq!(data["cursor"], id.as_str());
            revisions.push(data["payload"]["revision"].as_i64().unwrap());
            last = id;
        }
        (revisions, last)
    }
}

async fn commit_cluster(app: &TestApp, name: &str) {
    let answer = app
        .put(&format!("{BASE}/clusters/{name}"), &cluster(name), &[])
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_live_stream_sees_each_commit_and_resumes_after_its_last_event_id_exactly_once(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    commit_cluster(&app, "a").await;
    commit_cluster(&app, "b").await;

    let mut live = SseReader::start(&app, None).await;
    assert_eq!(live.revisions(2).await.0, [1, 2]);
    commit_cluster(&app, "c").await;
    let (seen, last) = live.revisions(1).await;
    assert_eq!(seen, [3]);
    drop(live);

    // Missed while away: exactly those, in order, then the live ones.
    commit_cluster(&app, "d").await;
    commit_cluster(&app, "e").await;
    let mut back = SseReader::start(&app, Some(&last)).await;
    assert_eq!(back.revisions(2).await.0, [4, 5]);
    commit_cluster(&app, "f").await;
    assert_eq!(back.revisions(1).await.0, [6]);

    let refused = SseReader::open(&app, Some("not-a-cursor")).await;
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "since");
}

/// The cursor of the newest event of `base`'s feed.
async fn newest_cursor(app: &TestApp, base: &str) -> String {
    let page = page(app, base, "limit=500").await;
    let items = page["items"].as_array().unwrap();
    items.last().unwrap()["cursor"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_cursor_older_than_facts_that_aged_out_is_answered_410_by_every_reader_and_a_later_one_reads_on(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("umbrella", "Umbrella").await;
    commit_cluster(&app, "a").await;
    let umbrella = "/api/v1/tenants/umbrella";
    let answer = app
        .put(&format!("{umbrella}/clusters/u"), &cluster("u"), &[])
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    all_of(&app, 1).await;
    let before = newest_cursor(&app, BASE).await;
    let umbrella_before = newest_cursor(&app, umbrella).await;

    // A fact of acme's from 40 days ago, then the upkeep with 30 days of retention drops its day.
    sqlx::query("SELECT efms_fleet_daily_partitions(ARRAY['feed_facts'], 60, 2)")
        .execute(&pool)
        .await
        .unwrap();
    let acme = efms_domain::TenantSlug::parse("acme").unwrap().tenant_id();
    sqlx::query(
        "INSERT INTO feed_facts (tenant_id, type, at, payload)
         VALUES ($1, 'job.finished', now() - interval '40 days', '{}')",
    )
    .bind(acme)
    .execute(&pool)
    .await
    .unwrap();
    efms_commands::fleet::rollups::maintain_feed_facts(&pool, 30)
        .await
        .unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM feed_facts WHERE tenant_id = $1")
        .bind(acme)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 0, "the aged-out fact is dropped");

    let gone = app.get(&format!("{BASE}/events?since={before}")).await;
    assert_eq!(gone.status, 410, "{}", gone.body);
    assert_eq!(gone.body["errors"][0]["parameter"], "since");
    assert!(
        gone.body["type"].as_str().unwrap().ends_with("gone"),
        "{}",
        gone.body
    );
    let socket = app.get(&format!("{BASE}/events/ws?since={before}")).await;
    assert_eq!(socket.status, 410, "{}", socket.body);
    let stream = SseReader::open(&app, Some(&before)).await;
    assert_eq!(stream.status(), 410);

    // From the beginning, from a cursor handed out after the horizon, and another tenant's
    // cursor from before it (none of its facts aged out): all read on.
    page(&app, BASE, "").await;
    commit_cluster(&app, "b").await;
    let after = eventually(Duration::from_secs(30), "the new commit", || async {
        let newest = newest_cursor(&app, BASE).await;
        (newest != before).then_some(newest)
    })
    .await;
    page(&app, BASE, &format!("since={after}")).await;
    page(&app, umbrella, &format!("since={umbrella_before}")).await;
}
