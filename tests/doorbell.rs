//! The log's doorbell over a real Postgres: a commit's ring wakes the readers of its aggregate
//! type at once, and leaves the readers of other types to their polling interval.

use std::time::Duration;

use efms_commands::{CommitBell, SharedDoorbell};
use sqlx::PgPool;
use tokio::time::{timeout, Instant};

/// Long enough that a reader woken within a few seconds was woken by a ring, not by its poll.
const POLL: Duration = Duration::from_secs(60);

#[sqlx::test(migrations = "../migrations")]
async fn a_ring_wakes_the_readers_of_its_type_and_not_the_others(pool: PgPool) {
    let doorbell = SharedDoorbell::spawn(&pool, POLL);
    let (mut config_reader, mut vm_reader) = (doorbell.clone(), doorbell);
    let bell = CommitBell::spawn(&pool);
    // Let the listening connection come up, then wake the readers of whatever rang meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bell.ring("tenant");
    let started = Instant::now();
    let config_woken = tokio::spawn(async move {
        config_reader.wait_for("config").await;
        started.elapsed()
    });
    let vm_woken = tokio::spawn(async move {
        vm_reader.wait_for("vm").await;
        started.elapsed()
    });
    for _ in 0..20 {
        bell.ring("config");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config_woken = timeout(Duration::from_secs(30), config_woken)
        .await
        .expect("the config reader wakes at a config ring")
        .unwrap();
    assert!(config_woken < POLL, "woken by the ring: {config_woken:?}");
    assert!(
        !vm_woken.is_finished(),
        "config rings do not wake a reader of VMs"
    );
    bell.ring("vm");
    timeout(Duration::from_secs(30), vm_woken)
        .await
        .expect("the VM reader wakes at a VM ring")
        .unwrap();
}
