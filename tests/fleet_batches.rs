//! Agents' reports stored together: lifecycle events that arrive together on a stream are each
//! answered and committed in few transactions, and the fleet projection writes a run of container
//! events in one go with the same rows it writes for them one by one.

use std::time::Duration;

use efms_fleet_proto::{
    agent_message::Body, server_message, ContainerEvent, ContainerSnapshot, ContainerState,
    EventKind, Health,
};
use efms_projections::{FleetProjection, Projection, ProjectionError, Projector};
use efms_tests::agent_stream::{acme, container, container_id, Agent};
use efms_tests::fleet::eventually;
use efms_tests::TestApp;
use sqlx::postgres::PgConnection;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

/// The `n`th event of a burst: containers `a` and `b` in turn, dying, starting, turning
/// unhealthy and healthy again, killed by OOM; one engine nanosecond apart.
fn burst_event(n: u32) -> ContainerEvent {
    let c = if n.is_multiple_of(2) { 'a' } else { 'b' };
    let (kind, exit_code, health) = match (n / 2) % 5 {
        0 => (EventKind::Die, Some(137), Health::Unspecified),
        1 => (EventKind::Start, None, Health::Unspecified),
        2 => (EventKind::HealthStatus, None, Health::Unhealthy),
        3 => (EventKind::HealthStatus, None, Health::Healthy),
        _ => (EventKind::Oom, None, Health::Unspecified),
    };
    ContainerEvent {
        container_id: container_id(c),
        name: format!("envoy-{c}"),
        image: "efms-test/envoy:1.40.0".into(),
        kind: kind.into(),
        exit_code,
        health: health.into(),
        time_nanos: 1_700_000_000_000_000_000 + i64::from(n),
        ..ContainerEvent::default()
    }
}

fn snapshot(containers: &[char]) -> Body {
    Body::Snapshot(ContainerSnapshot {
        containers: containers
            .iter()
            .map(|c| container(*c, ContainerState::Running))
            .collect(),
    })
}

/// Sends `count` burst events without waiting between them; answers every answer read, in order.
async fn burst(agent: &mut Agent, count: u32) -> Vec<server_message::Body> {
    let first = agent.seq + 1;
    let sender = agent.sender.clone();
    let sending = tokio::spawn(async move {
        for (n, seq) in (0..count).zip(first..) {
            let message = efms_fleet_proto::AgentMessage {
                seq,
                body: Some(Body::Event(burst_event(n))),
            };
            sender.send(message).await.unwrap();
        }
    });
    let mut answers = Vec::new();
    for _ in 0..count {
        answers.push(agent.answer().await.body.expect("an answer's body"));
    }
    sending.await.unwrap();
    agent.seq += u64::from(count);
    answers
}

/// Waits until the fleet projection has applied every event of the log.
async fn projected(pool: &PgPool) {
    eventually(WAIT, "the fleet projection caught up", || async {
        let behind: bool = sqlx::query_scalar(
            r"SELECT coalesce((SELECT max(global_position) FROM events), 0)
                   > (SELECT global_position FROM projection_checkpoints
                      WHERE projection = 'fleet')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (!behind).then_some(())
    })
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn lifecycle_events_that_arrive_together_are_each_answered_and_committed_together(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let token = acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    let answer = agent.report(snapshot(&['a', 'b'])).await;
    assert!(Agent::acked(&answer, 2), "{answer:?}");
    let answers = burst(&mut agent, 300).await;
    let acked: Vec<u64> = answers
        .iter()
        .map(|body| match body {
            server_message::Body::Ack(ack) => ack.seq,
            other => panic!("an Ack expected: {other:?}"),
        })
        .collect();
    assert_eq!(
        acked,
        (3..303).collect::<Vec<u64>>(),
        "one Ack each, in order"
    );
    let (events, commits): (i64, i64) = sqlx::query_as(
        r"SELECT count(*), count(DISTINCT tx_id::text) FROM events
          WHERE aggregate_type = 'vm' AND event_type = 'ContainerLifecycle'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, 300, "every event is in the log, once");
    assert!(
        commits <= 20,
        "300 events that arrived together took {commits} commits"
    );
    projected(&pool).await;
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM container_history WHERE change <> 'observed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(history, 300, "each event is in its container's history");
}

/// The fleet projection applied one event per transaction, as a projector of its own.
#[derive(Debug, Clone, Copy)]
struct OneByOne;

impl Projection for OneByOne {
    const NAME: &'static str = "fleet_one_by_one";
    const AGGREGATE_TYPE: &'static str = "vm";
    const TABLES: &'static [&'static str] = FleetProjection::TABLES;
    type Replaying = ();

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &efms_commands::RecordedEvent,
    ) -> Result<(), ProjectionError> {
        FleetProjection.apply(tx, event).await
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        FleetProjection.reset(tx).await
    }

    async fn reset_tenant(
        &self,
        tx: &mut PgConnection,
        tenant_id: uuid::Uuid,
    ) -> Result<(), ProjectionError> {
        FleetProjection.reset_tenant(tx, tenant_id).await
    }
}

/// Every row of the containers' read model and of the VMs', as JSON, in key order.
async fn container_rows(pool: &PgPool) -> [Vec<serde_json::Value>; 3] {
    let containers =
        sqlx::query_scalar("SELECT to_jsonb(c) FROM containers c ORDER BY tenant_id, container_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let history = sqlx::query_scalar(
        r"SELECT to_jsonb(h) FROM container_history h
          ORDER BY tenant_id, vm_name, container_id, seq",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let vms = sqlx::query_scalar("SELECT to_jsonb(v) FROM vms v ORDER BY tenant_id, name")
        .fetch_all(pool)
        .await
        .unwrap();
    [containers, history, vms]
}

#[sqlx::test(migrations = "../migrations")]
async fn container_events_projected_together_leave_the_rows_they_leave_one_by_one(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let token = acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    agent.report(snapshot(&['a', 'b'])).await;
    burst(&mut agent, 40).await;
    // `a` goes (gone), `b` changes, `a` comes back: gone times and reasons are set and cleared.
    agent.report(snapshot(&['b'])).await;
    projected(&pool).await;
    let live: i32 = sqlx::query_scalar("SELECT live_containers FROM vms")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 1, "a gone container is no longer counted");
    agent.report(Body::Event(burst_event(41))).await;
    agent.report(snapshot(&['a', 'b'])).await;
    burst(&mut agent, 12).await;
    projected(&pool).await;
    let together = container_rows(&pool).await;
    assert!(together[1].len() > 50, "{} history rows", together[1].len());
    assert_eq!(together[2][0]["live_containers"], 2, "{}", together[2][0]);
    let one_by_one = Projector::new(pool.clone(), OneByOne);
    one_by_one.reset().await.unwrap();
    one_by_one.catch_up().await.unwrap();
    let alone = container_rows(&pool).await;
    assert_eq!(together[0], alone[0], "the containers' rows");
    assert_eq!(together[1], alone[1], "the containers' history");
    assert_eq!(
        together[2], alone[2],
        "the VMs' rows, their live containers counted"
    );
}
