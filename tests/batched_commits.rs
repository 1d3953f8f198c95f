//! Commands on many streams of a tenant committed together (`CommandBus::execute_batch`), as the
//! fleet's writer of agents' lifecycle events does: one commit for all, each stream in order, and
//! nothing lost, doubled or wrongly refused when another replica wrote to a stream meanwhile.

use efms_commands::{BatchCommand, CommandBus, CommandError, CommitBell, CommitMetadata};
use efms_domain::fleet::{EventKind, LifecycleEvent, Vm, VmCommand, VmError, VmName, VmPlacement};
use sqlx::PgPool;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x5eed);

fn bus(pool: &PgPool) -> CommandBus {
    CommandBus::new(pool.clone(), CommitBell::spawn(pool))
}

async fn register(bus: &CommandBus, vm: &str) {
    bus.execute::<Vm>(
        TENANT,
        vm,
        VmCommand::Register {
            name: VmName::parse(vm).unwrap(),
            placement: VmPlacement::default(),
            token_id: Uuid::new_v4(),
        },
        (),
        CommitMetadata::by("test"),
    )
    .await
    .unwrap();
}

fn started(container: char, time_nanos: i64) -> LifecycleEvent {
    LifecycleEvent {
        container_id: container.to_string().repeat(64),
        name: format!("envoy-{container}"),
        image: "envoy:1".into(),
        node_id: None,
        kind: EventKind::Start,
        exit_code: None,
        signal: None,
        health: None,
        time_nanos,
    }
}

fn record(vm: &str, event: LifecycleEvent) -> BatchCommand<VmCommand> {
    BatchCommand {
        aggregate_id: vm.to_owned(),
        command: VmCommand::Record {
            events: vec![event],
        },
        metadata: CommitMetadata::by(vm),
    }
}

/// The lifecycle events of `vm` in the log: (sequence, transaction, container event time).
async fn recorded(pool: &PgPool, vm: &str) -> Vec<(i64, String, i64)> {
    sqlx::query_as(
        r"SELECT sequence, tx_id::text, (payload->'event'->>'time_nanos')::bigint
          FROM events WHERE tenant_id = $1 AND aggregate_type = 'vm' AND aggregate_id = $2
            AND event_type = 'ContainerLifecycle'
          ORDER BY sequence",
    )
    .bind(TENANT)
    .bind(vm)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_batch_of_several_vms_events_is_one_commit_with_each_stream_in_order(pool: PgPool) {
    let bus = bus(&pool);
    register(&bus, "vm-a").await;
    register(&bus, "vm-b").await;
    let outcomes = bus
        .execute_batch::<Vm>(
            TENANT,
            &(),
            vec![
                record("vm-a", started('a', 1)),
                record("vm-b", started('b', 2)),
                record("vm-a", started('c', 3)),
            ],
        )
        .await;
    let positions: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(positions[0].is_some());
    assert!(
        positions.iter().all(|p| *p == positions[0]),
        "{positions:?}"
    );
    let a = recorded(&pool, "vm-a").await;
    let b = recorded(&pool, "vm-b").await;
    assert_eq!(
        a.iter().map(|(_, _, t)| *t).collect::<Vec<_>>(),
        [1, 3],
        "in the order given"
    );
    assert!(a[0].0 < a[1].0);
    assert_eq!(b.len(), 1);
    assert!(
        a.iter().chain(&b).all(|(_, tx, _)| *tx == a[0].1),
        "one transaction: {a:?} {b:?}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_batch_on_a_stream_another_replica_moved_loses_nothing_and_doubles_nothing(pool: PgPool) {
    let here = bus(&pool);
    let there = bus(&pool);
    register(&here, "vm-a").await;
    register(&here, "vm-b").await;
    // `here` keeps vm-a's state warm; the other replica records on it meanwhile.
    there
        .execute::<Vm>(
            TENANT,
            "vm-a",
            VmCommand::Record {
                events: vec![started('x', 10)],
            },
            (),
            CommitMetadata::by("vm-a"),
        )
        .await
        .unwrap();
    let outcomes = here
        .execute_batch::<Vm>(
            TENANT,
            &(),
            vec![
                // Already recorded by the other replica: nothing to add.
                record("vm-a", started('x', 10)),
                record("vm-a", started('y', 11)),
                record("vm-b", started('z', 12)),
            ],
        )
        .await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes[0], None,
        "the event the other replica stored is not stored again"
    );
    assert!(outcomes[1].is_some() && outcomes[2].is_some());
    let a: Vec<i64> = recorded(&pool, "vm-a").await.iter().map(|r| r.2).collect();
    assert_eq!(a, [10, 11]);
    assert_eq!(recorded(&pool, "vm-b").await.len(), 1);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_refused_command_in_a_batch_leaves_the_others_committed(pool: PgPool) {
    let bus = bus(&pool);
    register(&bus, "vm-a").await;
    register(&bus, "vm-b").await;
    bus.execute::<Vm>(
        TENANT,
        "vm-b",
        VmCommand::Remove,
        (),
        CommitMetadata::by("test"),
    )
    .await
    .unwrap();
    let outcomes = bus
        .execute_batch::<Vm>(
            TENANT,
            &(),
            vec![
                record("vm-b", started('b', 1)),
                record("vm-a", started('a', 2)),
                record("vm-unknown", started('u', 3)),
            ],
        )
        .await;
    assert!(
        matches!(outcomes[0], Err(CommandError::Rejected(VmError::Removed))),
        "{:?}",
        outcomes[0]
    );
    assert!(matches!(outcomes[1], Ok(Some(_))), "{:?}", outcomes[1]);
    assert!(
        matches!(outcomes[2], Err(CommandError::Rejected(VmError::NotFound))),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(recorded(&pool, "vm-a").await.len(), 1);
    assert!(recorded(&pool, "vm-b").await.is_empty());
}
