//! Work a request starts that outlives it (bulk jobs), tracked so that a stopping replica finishes
//! it within a grace period instead of leaving it behind unseen.
//!
//! Once the process stops, new work is refused (the request answers 503 and another replica takes
//! the retry), and what runs is waited for. Work still running when the grace period ends is
//! named in the log; its job record stops moving, and every replica then reports it failed (see
//! `routes/jobs.rs`), so no job is orphaned silently.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

/// How long a stopping replica waits for its background work.
pub const GRACE: Duration = Duration::from_secs(30);

/// The process is stopping: it takes no new background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this replica is stopping and takes no new background work; retry")]
pub struct Stopping;

/// Background work of the process. Cheap to clone; clones share the work.
#[derive(Debug, Clone, Default)]
pub struct BackgroundWork {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: Mutex<JoinSet<()>>,
    stopping: AtomicBool,
}

impl BackgroundWork {
    /// Whether the process is stopping.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Runs `work` in the background, unless the process is stopping.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) -> Result<(), Stopping> {
        let mut tasks = self.inner.tasks.lock().expect("background work lock");
        if self.is_stopping() {
            return Err(Stopping);
        }
        // Forget what has finished, so the set holds only what runs.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(work);
        Ok(())
    }

    /// How many pieces of work run now.
    pub fn running(&self) -> usize {
        let mut tasks = self.inner.tasks.lock().expect("background work lock");
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Refuses new work and waits at most `grace` for the work that runs; returns how many pieces
    /// were still running then (they end with the process).
    pub async fn finish(&self, grace: Duration) -> usize {
        let mut tasks = {
            let mut tasks = self.inner.tasks.lock().expect("background work lock");
            self.inner.stopping.store(true, Ordering::SeqCst);
            std::mem::take(&mut *tasks)
        };
        let waited =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if waited.is_err() {
            tasks.len()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopping_process_waits_for_its_work_and_takes_no_more() {
        let work = BackgroundWork::default();
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        work.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            done.send(()).unwrap();
        })
        .unwrap();
        assert_eq!(work.running(), 1);
        assert_eq!(work.finish(Duration::from_secs(30)).await, 0);
        assert!(finished.try_recv().is_ok(), "the work ran to its end");
        assert!(work.is_stopping());
        assert_eq!(work.spawn(async {}), Err(Stopping));
    }

    #[tokio::test]
    async fn work_still_running_after_the_grace_period_is_counted() {
        let work = BackgroundWork::default();
        work.spawn(std::future::pending()).unwrap();
        work.spawn(async {}).unwrap();
        assert_eq!(work.finish(Duration::from_millis(50)).await, 1);
    }
}
