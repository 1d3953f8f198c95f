//! Utilisation samples rolled up by the minute: a VM's utilisation read with a step of whole
//! minutes is the same from the rollups as from the raw samples, and still answers once the raw
//! samples are gone (their retention is far shorter).

use chrono::{DateTime, Duration, DurationRound, Utc};
use efms_commands::fleet::rollups;
use efms_fleet_proto::{
    agent_message::Body, ContainerSnapshot, ContainerState, ContainerUsage, ContainerUsages,
};
use efms_tests::agent_stream::{self, Agent};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

/// `(samples, cpu_percent_avg, cpu_percent_max)` of each step, as the API answers.
async fn steps(app: &TestApp, from: DateTime<Utc>, to: DateTime<Utc>, step: i64) -> Vec<Value> {
    let answer = app
        .get(&format!(
            "{BASE}/vms/vm-1/utilisation?from={}&to={}&step={step}",
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            json!([
                step["samples"],
                step["cpu_percent_avg"],
                step["cpu_percent_max"]
            ])
        })
        .collect()
}

async fn vm_sample(pool: &PgPool, at: DateTime<Utc>, cpu: f32) {
    sqlx::query(
        "INSERT INTO vm_samples (tenant_id, vm_name, sampled_at, cpu_percent, load_1m, load_5m,
             load_15m, memory_used_bytes, memory_total_bytes, network_rx_bytes_per_second,
             network_tx_bytes_per_second)
         VALUES ($1, 'vm-1', $2, $3, 1, 1, 1, 1000, 4000, 10, 20)",
    )
    .bind(efms_domain::TenantSlug::parse("acme").unwrap().tenant_id())
    .bind(at)
    .bind(cpu)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn utilisation_by_whole_minutes_answers_from_the_rollups_once_the_raw_samples_are_gone(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let vm = app
        .post(&format!("{BASE}/vms"), &json!({ "name": "vm-1" }))
        .await;
    assert_eq!(vm.status, 201, "{}", vm.body);
    let now = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
    let minute = now - Duration::minutes(10);
    vm_sample(&pool, minute + Duration::seconds(5), 10.0).await;
    vm_sample(&pool, minute + Duration::seconds(35), 30.0).await;
    vm_sample(&pool, minute + Duration::seconds(65), 50.0).await;
    // In the current minute: after any mark a rollup can set now.
    vm_sample(&pool, now + Duration::milliseconds(1), 70.0).await;
    let (from, to) = (minute, now + Duration::minutes(1));
    let raw = steps(&app, from, to, 60).await;
    assert_eq!(
        raw,
        [
            json!([2, 20.0, 30.0]),
            json!([1, 50.0, 50.0]),
            json!([1, 70.0, 70.0])
        ]
    );

    let written = rollups::roll_up(&pool).await.unwrap();
    assert_eq!(written, 2, "one row per VM and past minute");
    assert_eq!(
        steps(&app, from, to, 60).await,
        raw,
        "rollups before the mark, raw samples after it: every sample once"
    );
    assert_eq!(
        rollups::roll_up(&pool).await.unwrap(),
        0,
        "a minute is rolled up once"
    );

    // The raw samples of the rolled-up minutes expire; the rollups answer for them.
    sqlx::query("DELETE FROM vm_samples WHERE sampled_at < $1")
        .bind(now)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(steps(&app, from, to, 60).await, raw);
    assert_eq!(
        steps(&app, from, now, 120).await,
        [json!([3, 30.0, 50.0])],
        "rollups of rollups average over the samples"
    );
    assert_eq!(
        steps(&app, from, to, 30).await,
        [json!([1, 70.0, 70.0])],
        "steps shorter than a minute read the raw samples alone"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn container_samples_are_rolled_up_per_container_and_minute(pool: PgPool) {
    let tenant_id = efms_domain::TenantSlug::parse("acme").unwrap().tenant_id();
    let minute = Utc::now().duration_trunc(Duration::minutes(1)).unwrap() - Duration::minutes(5);
    let (first, second) = ("c1".repeat(32), "d2".repeat(32));
    // Two rounds of one VM: each row holds every container of its round.
    for (seconds, cpu, memory) in [
        (1, [5.0_f32, 1.0], [100_i64, 7]),
        (31, [15.0, 3.0], [300, 9]),
    ] {
        sqlx::query(
            "INSERT INTO container_samples (tenant_id, vm_name, sampled_at, container_ids,
                 cpu_percent, memory_used_bytes, memory_limit_bytes, pids)
             VALUES ($1, 'vm-1', $2, ARRAY[decode($3, 'hex'), decode($4, 'hex')], $5, $6,
                     ARRAY[NULL, NULL]::bigint[], ARRAY[NULL, NULL]::bigint[])",
        )
        .bind(tenant_id)
        .bind(minute + Duration::seconds(seconds))
        .bind(&first)
        .bind(&second)
        .bind(cpu)
        .bind(memory)
        .execute(&pool)
        .await
        .unwrap();
    }
    assert_eq!(
        rollups::roll_up(&pool).await.unwrap(),
        2,
        "one rollup per container"
    );
    let rolled_up = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32, f64, f32, f64, i64)>(
                "SELECT vm_name, samples, cpu_percent_sum, cpu_percent_max,
                        memory_used_bytes_sum, memory_used_bytes_max
                 FROM container_samples_1m WHERE container_id = $1 AND minute = $2",
            )
            .bind(id)
            .bind(minute)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        rolled_up(first).await,
        ("vm-1".to_owned(), 2, 20.0, 15.0, 400.0, 300)
    );
    assert_eq!(
        rolled_up(second).await,
        ("vm-1".to_owned(), 2, 4.0, 3.0, 16.0, 9)
    );
}

/// A stored usage round: its VM, container ids, CPU %, memory used, memory limits and pids.
type StoredRound = (
    String,
    Vec<String>,
    Vec<f32>,
    Vec<i64>,
    Vec<Option<i64>>,
    Vec<Option<i64>>,
);

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_usage_round_is_stored_as_one_row_holding_each_container_in_order(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let token = agent_stream::acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-1").await.unwrap();
    let snapshot = Body::Snapshot(ContainerSnapshot {
        containers: ['a', 'b']
            .into_iter()
            .map(|c| agent_stream::container(c, ContainerState::Running))
            .collect(),
    });
    let seq = agent.send(snapshot).await;
    assert!(Agent::acked(&agent.answer().await, seq));
    let usage = |c: char, cpu_percent: f64, memory_used_bytes: u64| ContainerUsage {
        container_id: agent_stream::container_id(c),
        cpu_percent,
        memory_used_bytes,
        memory_limit_bytes: Some(256 << 20),
        pids: None,
    };
    let round = Body::Usage(ContainerUsages {
        sampled_at: 0,
        containers: vec![usage('b', 12.5, 2_000), usage('a', 3.0, 1_000)],
    });
    let seq = agent.send(round).await;
    assert!(Agent::acked(&agent.answer().await, seq));
    let rows: Vec<StoredRound> = sqlx::query_as(
        "SELECT vm_name, ARRAY(SELECT encode(id, 'hex') FROM unnest(container_ids) AS id),
                    cpu_percent, memory_used_bytes, memory_limit_bytes, pids
             FROM container_samples",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [(
            "vm-1".to_owned(),
            vec![
                agent_stream::container_id('b'),
                agent_stream::container_id('a')
            ],
            vec![12.5, 3.0],
            vec![2_000, 1_000],
            vec![Some(256 << 20), Some(256 << 20)],
            vec![None, None],
        )]
    );
}
