//! The event store against a real Postgres: optimistic concurrency, atomic commits, the
//! commit-ordered reader, tenant isolation by row-level security, audit and immutability.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistedEventRepository, PersistenceError};
use efms_commands::event_store::{append, append_commit};
use efms_commands::log::read_after;
use efms_commands::{
    CommandBus, CommitBell, CommitMetadata, LogDoorbell, PgEventRepository, Position, Scope,
};
use efms_domain::{Tenant, TenantCommand, TenantName, TenantSlug};
use efms_projections::{Projector, TenantsProjection};
use efms_tests::event;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgPool, Row as _};
use uuid::Uuid;

mod probe {
    //! A do-nothing aggregate: the repository only needs its type name.
    use cqrs_es::event_sink::EventSink;
    use cqrs_es::{Aggregate, DomainEvent};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Probe;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Probed {
        pub n: usize,
    }

    impl DomainEvent for Probed {
        fn event_type(&self) -> String {
            "Probed".into()
        }
        fn event_version(&self) -> String {
            "1".into()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    pub struct Never;

    impl Aggregate for Probe {
        const TYPE: &'static str = "probe";
        type Command = ();
        type Event = Probed;
        type Error = Never;
        type Services = ();

        async fn handle(&mut self, (): (), (): &(), _: &EventSink<Self>) -> Result<(), Never> {
            Ok(())
        }

        fn apply(&mut self, _: Probed) {}
    }
}

/// Reads the log from the start until `count` events have been read. Other databases' transactions
/// on the same server hold the readable horizon back for a moment, as they would in production.
async fn read_until(pool: &PgPool, count: usize) -> Vec<efms_commands::RecordedEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while events.len() < count && std::time::Instant::now() < deadline {
        let after = events
            .last()
            .map_or(Position::START, |e: &efms_commands::RecordedEvent| {
                e.position
            });
        let mut tx = Scope::System.begin(pool).await.unwrap();
        let batch = read_after(&mut tx, after, 100, None).await.unwrap();
        tx.commit().await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        events.extend(batch);
    }
    events
}

/// Runs the projector until its checkpoint reaches `position`.
async fn project_up_to(projector: &Projector<TenantsProjection>, position: Position) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while projector.catch_up().await.unwrap() < position {
        assert!(
            std::time::Instant::now() < deadline,
            "the projector never reached {position:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count_events(pool: &PgPool, aggregate_id: &str) -> i64 {
    let mut tx = Scope::System.begin(pool).await.unwrap();
    let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(aggregate_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    count
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn concurrent_commits_on_one_stream_exactly_one_wins_and_nothing_partial_is_stored(
    pool: PgPool,
) {
    let tenant = Uuid::new_v4();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for writer in ["alice", "bob"] {
        let repo = PgEventRepository::new(pool.clone(), tenant);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let events: Vec<_> = (1..=3).map(|seq| event("stream-1", seq, writer)).collect();
            barrier.wait().await;
            repo.persist::<probe::Probe>(&events, None).await
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let won = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let conflicts = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(PersistenceError::OptimisticLockError)))
        .count();
    assert_eq!((won, conflicts), (1, 1), "{outcomes:?}");

    let stored = PgEventRepository::new(pool.clone(), tenant)
        .get_events::<probe::Probe>("stream-1")
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    let actors: HashSet<_> = stored
        .iter()
        .map(|e| e.metadata["actor"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actors.len(),
        1,
        "all stored events come from the one winner: {actors:?}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn appending_a_taken_sequence_conflicts_and_writes_none_of_the_commit(pool: PgPool) {
    let tenant = Uuid::new_v4();
    let repo = PgEventRepository::new(pool.clone(), tenant);
    repo.persist::<probe::Probe>(&[event("s", 1, "a"), event("s", 2, "a")], None)
        .await
        .unwrap();
    // Sequences 3 and 4 are free, 2 is not: the whole commit must fail.
    let result = repo
        .persist::<probe::Probe>(
            &[event("s", 3, "b"), event("s", 2, "b"), event("s", 4, "b")],
            None,
        )
        .await;
    assert!(
        matches!(result, Err(PersistenceError::OptimisticLockError)),
        "{result:?}"
    );
    assert_eq!(count_events(&pool, "s").await, 2);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn stored_events_carry_tenant_actor_event_id_time_and_global_position(pool: PgPool) {
    let tenant = Uuid::new_v4();
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let repo = PgEventRepository::new(pool.clone(), tenant);
    repo.persist::<probe::Probe>(&[event("s", 1, "carol"), event("s", 2, "carol")], None)
        .await
        .unwrap();
    let position = repo.last_commit().expect("a commit reports its position");

    let events = read_until(&pool, 2).await;
    assert_eq!(events.len(), 2);
    for recorded in &events {
        assert_eq!(recorded.tenant_id, tenant);
        assert_eq!(recorded.actor, "carol");
        assert!(recorded.recorded_at >= before);
        assert_ne!(recorded.event_id, Uuid::nil());
    }
    assert_ne!(events[0].event_id, events[1].event_id);
    assert!(events[0].position.global_position < events[1].position.global_position);
    assert_eq!(events[1].position, position);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_event_without_actor_is_refused_before_it_reaches_the_log(pool: PgPool) {
    let repo = PgEventRepository::new(pool.clone(), Uuid::new_v4());
    let mut anonymous = event("s", 1, "x");
    anonymous.metadata = serde_json::json!({});
    assert!(repo
        .persist::<probe::Probe>(&[anonymous], None)
        .await
        .is_err());
    assert_eq!(count_events(&pool, "s").await, 0);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn commit_on_a_killed_connection_leaves_nothing_behind(pool: PgPool) {
    let tenant = Uuid::new_v4();
    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let mut tx = Scope::Tenant(tenant).begin_on(&mut conn).await.unwrap();
    let events: Vec<_> = (1..=5).map(|seq| event("doomed", seq, "dave")).collect();
    append(&mut tx, tenant, &events).await.unwrap();

    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    assert!(
        tx.commit().await.is_err(),
        "a commit on a killed connection cannot succeed"
    );
    drop(conn);

    assert_eq!(count_events(&pool, "doomed").await, 0);
    let audit: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE aggregate_id = 'doomed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(audit, 0);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_tenant_scoped_connection_reads_none_of_another_tenants_rows(pool: PgPool) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for tenant in [a, b] {
        PgEventRepository::new(pool.clone(), tenant)
            .persist::<probe::Probe>(
                &[event("shared-name", 1, "x")],
                Some(("shared-name".into(), serde_json::json!(null), 1)),
            )
            .await
            .unwrap();
    }
    let mut tx = Scope::Tenant(a).begin(&pool).await.unwrap();
    for table in ["events", "snapshots", "audit_log", "tenants"] {
        let rows = tx
            .fetch_all(format!("SELECT * FROM {table}").as_str())
            .await
            .unwrap();
        for row in &rows {
            let tenant: Uuid = row.get("tenant_id");
            assert_eq!(tenant, a, "{table} leaked a row of another tenant");
        }
        if table != "tenants" {
            assert_eq!(rows.len(), 1, "{table}: tenant A's own row is visible");
        }
    }
    // Partitions are not reachable directly, and writing another tenant's row is refused.
    assert!(tx.fetch_all("SELECT * FROM events_p00").await.is_err());
    tx.rollback().await.unwrap();

    let mut tx = Scope::Tenant(a).begin(&pool).await.unwrap();
    assert!(append(&mut tx, b, &[event("intruder", 1, "x")])
        .await
        .is_err());
    tx.rollback().await.unwrap();
    assert_eq!(count_events(&pool, "intruder").await, 0);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_one_statement_commit_runs_as_the_application_role_and_leaves_the_session_as_it_was(
    pool_options: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    // One connection, so the checks after the commit see the session that made it.
    let pool = pool_options
        .max_connections(1)
        .connect_with(connect_options)
        .await
        .unwrap();
    let tenant = Uuid::new_v4();
    let position = append_commit(&pool, tenant, &[event("one", 1, "gina")])
        .await
        .unwrap();
    assert!(position.is_some());
    let db_role: String =
        sqlx::query_scalar("SELECT db_role FROM audit_log WHERE aggregate_id = 'one'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(db_role.ends_with("/efms_app"), "audited as {db_role}");
    let (role, tenant_setting): (String, Option<String>) =
        sqlx::query_as("SELECT current_user::text, current_setting('app.tenant_id', true)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_ne!(role, "efms_app");
    assert!(tenant_setting.unwrap_or_default().is_empty());
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_application_role_cannot_choose_its_tenant_through_the_commit_function(pool: PgPool) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut tx = Scope::Tenant(a).begin(&pool).await.unwrap();
    let refused = sqlx::query(
        "SELECT * FROM append_commit($1, ARRAY['probe'], ARRAY['intruder'], ARRAY[1::bigint],
                ARRAY['E'], ARRAY['1'], ARRAY['{}'::jsonb], ARRAY['{\"actor\": \"x\"}'::jsonb],
                ARRAY[gen_random_uuid()], ARRAY['x'])",
    )
    .bind(b)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    let code = refused
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code);
    assert_eq!(code.as_deref(), Some("42501"), "{refused}");
    tx.rollback().await.unwrap();
    assert_eq!(count_events(&pool, "intruder").await, 0);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn events_cannot_be_updated_or_deleted_even_by_the_owner(pool: PgPool) {
    PgEventRepository::new(pool.clone(), Uuid::new_v4())
        .persist::<probe::Probe>(&[event("fact", 1, "x")], None)
        .await
        .unwrap();
    assert!(pool
        .execute("UPDATE events SET actor = 'forger'")
        .await
        .is_err());
    assert!(pool.execute("DELETE FROM events").await.is_err());
    assert!(pool.execute("TRUNCATE events").await.is_err());
    assert_eq!(count_events(&pool, "fact").await, 1);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn every_commit_leaves_one_audit_row_naming_the_actor(pool: PgPool) {
    let tenant = Uuid::new_v4();
    let repo = PgEventRepository::new(pool.clone(), tenant);
    repo.persist::<probe::Probe>(&[event("s", 1, "erin"), event("s", 2, "erin")], None)
        .await
        .unwrap();
    repo.persist::<probe::Probe>(&[event("s", 3, "frank")], None)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT actor, first_sequence, last_sequence FROM audit_log WHERE tenant_id = $1 ORDER BY audit_id")
        .bind(tenant)
        .fetch_all(&pool)
        .await
        .unwrap();
    let audit: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|row| {
            (
                row.get("actor"),
                row.get("first_sequence"),
                row.get("last_sequence"),
            )
        })
        .collect();
    assert_eq!(audit, vec![("erin".into(), 1, 2), ("frank".into(), 3, 3)]);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_commit_rings_the_doorbell_of_waiting_readers(pool: PgPool) {
    // A long polling interval: only the notification can wake the reader in time.
    let mut doorbell = LogDoorbell::connect(&pool, Duration::from_secs(30)).await;
    let repo =
        PgEventRepository::new(pool.clone(), Uuid::new_v4()).with_bell(CommitBell::spawn(&pool));
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        repo.persist::<probe::Probe>(&[event("ring", 1, "x")], None)
            .await
            .unwrap();
    });
    tokio::time::timeout(Duration::from_secs(10), doorbell.wait())
        .await
        .expect("the doorbell rang on commit");
    writer.await.unwrap();
}

/// Writers that each own `streams` streams and make `commits` commits of 1 or 2 events, holding
/// every `hold_every`th transaction open for a while before committing it.
async fn writer(pool: PgPool, tenant: Uuid, writer: usize, commits: usize, hold_every: usize) {
    let streams = 10;
    let mut next_sequence = vec![1usize; streams];
    for commit in 0..commits {
        let stream = commit % streams;
        let id = format!("w{writer}-s{stream}");
        let size = 1 + commit % 2;
        let events: Vec<_> = (0..size)
            .map(|i| event(&id, next_sequence[stream] + i, "w"))
            .collect();
        next_sequence[stream] += size;
        let mut tx = Scope::Tenant(tenant).begin(&pool).await.unwrap();
        append(&mut tx, tenant, &events).await.unwrap();
        if commit % hold_every == 0 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tx.commit().await.unwrap();
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn commit_ordered_reader_yields_every_event_once_in_stream_order_under_8_writers(
    pool_options: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    const WRITERS: usize = 8;
    const COMMITS: usize = 1000;
    const EXPECTED: usize = WRITERS * (COMMITS / 2 + COMMITS);
    let pool = pool_options
        .max_connections(12)
        .connect_with(connect_options)
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let pool = pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checkpoint = Position::START;
            let mut seen = Vec::new();
            // Once the writers are done, the reader goes on until it has read as many events as they
            // wrote, or gives up after a while: transactions of other databases on the same server
            // can hold the readable horizon back for a moment, but a skipped event never comes back.
            let mut deadline = None;
            loop {
                let finished = done.load(Ordering::SeqCst);
                if finished && deadline.is_none() {
                    deadline = Some(std::time::Instant::now() + Duration::from_secs(20));
                }
                let mut tx = Scope::System.begin(&pool).await.unwrap();
                let batch = read_after(&mut tx, checkpoint, 100, None).await.unwrap();
                tx.commit().await.unwrap();
                if let Some(last) = batch.last() {
                    assert!(last.position > checkpoint);
                    checkpoint = last.position;
                }
                let empty = batch.is_empty();
                seen.extend(batch);
                let gave_up = deadline.is_some_and(|deadline| std::time::Instant::now() > deadline);
                if finished && empty && (seen.len() >= EXPECTED || gave_up) {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let tenants: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                pool.clone(),
                tenants[w % tenants.len()],
                w,
                COMMITS,
                40,
            ))
        })
        .collect();
    for handle in writers {
        handle.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    assert_eq!(seen.len(), EXPECTED, "every event is read");
    let unique: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(unique.len(), seen.len(), "no event is read twice");
    let mut next: HashMap<(Uuid, String), i64> = HashMap::new();
    for recorded in &seen {
        let expected = next
            .entry((recorded.tenant_id, recorded.aggregate_id.clone()))
            .or_insert(1);
        assert_eq!(
            recorded.sequence, *expected,
            "stream {} out of order",
            recorded.aggregate_id
        );
        *expected += 1;
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_aggregate_past_a_snapshot_loads_from_it_and_keeps_deciding_right(pool: PgPool) {
    const EVERY: usize = 20;
    let slug = TenantSlug::parse("snap").unwrap();
    let bus = CommandBus::new(pool.clone(), CommitBell::spawn(&pool)).with_snapshot_every(EVERY);
    let name = |n: usize| TenantName::parse(format!("Name {n}")).unwrap();
    bus.execute::<Tenant>(
        slug.tenant_id(),
        slug.as_str(),
        TenantCommand::Create {
            slug: slug.clone(),
            name: name(0),
        },
        (),
        CommitMetadata::by("t"),
    )
    .await
    .unwrap();
    for n in 1..=EVERY + 5 {
        bus.execute::<Tenant>(
            slug.tenant_id(),
            slug.as_str(),
            TenantCommand::Rename { name: name(n) },
            (),
            CommitMetadata::by("t"),
        )
        .await
        .unwrap();
    }
    bus.snapshots_written().await;
    let snapshot: (i64, serde_json::Value) =
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = 'snap'")
            .fetch_one(&pool)
            .await
            .unwrap();
    // Written from the store once a commit passed the interval: the state at its sequence.
    assert!(
        snapshot.0 >= i64::try_from(EVERY).unwrap(),
        "{}",
        snapshot.0
    );
    assert_eq!(snapshot.1["name"], format!("Name {}", snapshot.0 - 1));
    // A bus that keeps nothing warm loads from the snapshot and the events after it: renaming to
    // the current name changes nothing, creating again is refused.
    let cold = CommandBus::new(pool.clone(), CommitBell::spawn(&pool)).with_warm_streams(0);
    let unchanged = cold
        .execute::<Tenant>(
            slug.tenant_id(),
            slug.as_str(),
            TenantCommand::Rename {
                name: name(EVERY + 5),
            },
            (),
            CommitMetadata::by("t"),
        )
        .await
        .unwrap();
    assert_eq!(unchanged, None);
    let created_again = cold
        .execute::<Tenant>(
            slug.tenant_id(),
            slug.as_str(),
            TenantCommand::Create {
                slug: slug.clone(),
                name: name(0),
            },
            (),
            CommitMetadata::by("t"),
        )
        .await;
    assert!(matches!(
        created_again,
        Err(efms_commands::CommandError::Rejected(_))
    ));
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn rebuilding_the_tenant_registry_from_the_log_gives_identical_rows(pool: PgPool) {
    let bus = CommandBus::new(pool.clone(), CommitBell::spawn(&pool));
    for (slug, name) in [
        ("acme", "Acme"),
        ("globex", "Globex"),
        ("initech", "Initech"),
    ] {
        let slug = TenantSlug::parse(slug).unwrap();
        bus.execute::<Tenant>(
            slug.tenant_id(),
            slug.as_str(),
            TenantCommand::Create {
                slug: slug.clone(),
                name: TenantName::parse(name).unwrap(),
            },
            (),
            CommitMetadata::by("t"),
        )
        .await
        .unwrap();
    }
    let acme = TenantSlug::parse("acme").unwrap();
    let rename = TenantCommand::Rename {
        name: TenantName::parse("Acme Corp").unwrap(),
    };
    let last = bus
        .execute::<Tenant>(
            acme.tenant_id(),
            "acme",
            rename,
            (),
            CommitMetadata::by("t"),
        )
        .await
        .unwrap()
        .expect("a rename commits");

    let projector = Projector::new(pool.clone(), TenantsProjection);
    project_up_to(&projector, last).await;
    let snapshot = |pool: PgPool| async move {
        sqlx::query("SELECT to_jsonb(t) AS row FROM tenants t ORDER BY slug")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<serde_json::Value, _>("row"))
            .collect::<Vec<_>>()
    };
    let before = snapshot(pool.clone()).await;
    assert_eq!(before.len(), 3);
    assert_eq!(before[0]["name"], "Acme Corp");

    projector.reset().await.unwrap();
    assert!(snapshot(pool.clone()).await.is_empty());
    project_up_to(&projector, last).await;
    assert_eq!(snapshot(pool.clone()).await, before);
}
