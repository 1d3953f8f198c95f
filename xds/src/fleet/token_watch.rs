//! The join tokens of this process's open agent streams, re-checked together: one statement per
//! re-check interval for every stream (and at once when this process revoked one), each stream
//! told through a watch of its own when its token was revoked or its VM's watched images changed.
//! A thousand streams re-checking on their own cost a transaction each, every interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use efms_commands::fleet::tokens;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::FleetStreamSettings;

/// What a re-check found for a stream's token: the images its VM watches, or `None` once the
/// token is revoked (or its VM removed).
pub(crate) type Verdict = Option<Vec<String>>;

/// The most tokens asked about in one statement.
const TOKENS_PER_STATEMENT: usize = 4_096;

/// The streams whose tokens are watched.
#[derive(Debug, Default)]
pub(crate) struct TokenWatch {
    streams: Mutex<HashMap<Uuid, Watched>>,
}

#[derive(Debug)]
struct Watched {
    tenant_id: Uuid,
    token_id: Uuid,
    verdict: watch::Sender<Verdict>,
}

/// A stream's place in the watch; leaving it (dropping this) stops the watching.
#[derive(Debug)]
pub(crate) struct Watching {
    watch: Arc<TokenWatch>,
    stream_id: Uuid,
    /// Told what each re-check found.
    pub(crate) verdict: watch::Receiver<Verdict>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.watch.streams().remove(&self.stream_id);
    }
}

impl TokenWatch {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Watched>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the token `token_id` of `tenant_id` for the stream `stream_id`, whose VM watches
    /// `images` now.
    pub(crate) fn watch(
        self: &Arc<Self>,
        stream_id: Uuid,
        (tenant_id, token_id): (Uuid, Uuid),
        images: Vec<String>,
    ) -> Watching {
        let (verdict, receiver) = watch::channel(Some(images));
        let watched = Watched {
            tenant_id,
            token_id,
            verdict,
        };
        self.streams().insert(stream_id, watched);
        Watching {
            watch: self.clone(),
            stream_id,
            verdict: receiver,
        }
    }

    /// Re-checks every watched token, and tells each stream whose verdict changed.
    async fn recheck(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let tokens: Vec<(Uuid, Uuid)> = self
            .streams()
            .values()
            .map(|watched| (watched.tenant_id, watched.token_id))
            .collect();
        for chunk in tokens.chunks(TOKENS_PER_STATEMENT) {
            let verdicts = tokens::watched_while_live_all(pool, chunk).await?;
            for watched in self.streams().values() {
                if let Some(verdict) = verdicts.get(&watched.token_id) {
                    watched.verdict.send_if_modified(|now| {
                        let changed = now != verdict;
                        if changed {
                            now.clone_from(verdict);
                        }
                        changed
                    });
                }
            }
        }
        Ok(())
    }

    /// Re-checks the watched tokens every re-check interval, and when `recheck_now` moves, until
    /// `stopping` or until nothing but this task holds the watch.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        pool: PgPool,
        settings: watch::Receiver<FleetStreamSettings>,
        mut recheck_now: watch::Receiver<u64>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let watch: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let every = settings.borrow().recheck;
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    changed = recheck_now.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = async { drop(stopping.wait_for(|stop| *stop).await); } => return,
                }
                let Some(watch) = watch.upgrade() else {
                    return;
                };
                if let Err(error) = watch.recheck(&pool).await {
                    tracing::warn!(%error, "the agents' join tokens could not be re-checked");
                }
            }
        });
    }
}
