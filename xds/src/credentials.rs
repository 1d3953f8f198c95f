//! Ending streams whose token no longer speaks for anyone (NFR-SE-001): its user was deleted or
//! changed, or its proxy token revoked.
//!
//! Open streams register the user or proxy token their token names. One task checks every
//! distinct one registered, in one transaction whatever their number, every interval (and at once
//! when this process changed a user or revoked a token), and tells the streams of each withdrawn
//! one, which then end. Ten thousand streams of one service account cost one row a check; ten
//! thousand proxies with tokens of their own, one query of ten thousand keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use efms_commands::credentials::{withdrawals, Revocable, Withdrawn};
use efms_commands::Scope;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tonic::Status;

/// How often open streams are checked unless set otherwise.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(5);

/// The credentials of the open streams, and the task that checks them.
pub(crate) struct CredentialWatch {
    pool: PgPool,
    interval: watch::Sender<Duration>,
    /// What each registered credential was withdrawn for (`None` while valid), and how many
    /// streams hold it.
    entries: Mutex<HashMap<Revocable, Entry>>,
    /// Asks for a check now.
    nudge: Notify,
}

struct Entry {
    withdrawn: watch::Sender<Option<Withdrawn>>,
    streams: usize,
}

impl CredentialWatch {
    /// A watch over `pool`, with its checking task (which ends once the watch is dropped).
    pub fn spawn(pool: PgPool) -> Arc<Self> {
        let watch = Arc::new(Self {
            pool,
            interval: watch::Sender::new(DEFAULT_RECHECK),
            entries: Mutex::default(),
            nudge: Notify::new(),
        });
        tokio::spawn(check_forever(Arc::downgrade(&watch)));
        watch
    }

    /// Checks every `interval` from now on.
    pub fn set_interval(&self, interval: Duration) {
        self.interval.send_replace(interval);
    }

    /// Checks now rather than at the end of the interval.
    pub fn check_now(&self) {
        self.nudge.notify_one();
    }

    /// Registers a stream's credential until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, credential: Revocable) -> WatchedCredential {
        let mut entries = self.entries.lock().expect("credential watch lock");
        let entry = entries.entry(credential).or_insert_with(|| Entry {
            withdrawn: watch::Sender::new(None),
            streams: 0,
        });
        entry.streams += 1;
        WatchedCredential {
            watch: self.clone(),
            credential,
            withdrawn: entry.withdrawn.subscribe(),
        }
    }

    /// Checks the registered credentials once; tells the streams of the withdrawn ones.
    async fn check(&self) {
        let credentials: Vec<Revocable> = self
            .entries
            .lock()
            .expect("credential watch lock")
            .iter()
            .filter(|(_, entry)| entry.withdrawn.borrow().is_none())
            .map(|(credential, _)| *credential)
            .collect();
        if credentials.is_empty() {
            return;
        }
        match withdrawals(&self.pool, Scope::System, &credentials).await {
            Ok(withdrawn) => {
                let entries = self.entries.lock().expect("credential watch lock");
                for (credential, reason) in withdrawn {
                    if let Some(entry) = entries.get(&credential) {
                        tracing::info!(?credential, %reason, streams = entry.streams, "ending the streams of a withdrawn token");
                        entry.withdrawn.send_replace(Some(reason));
                    }
                }
            }
            // The streams stay open until the store answers again.
            Err(error) => tracing::warn!(%error, "cannot re-check the tokens of open xDS streams"),
        }
    }
}

async fn check_forever(watch: Weak<CredentialWatch>) {
    loop {
        let Some(current) = watch.upgrade() else {
            return;
        };
        let mut interval = current.interval.subscribe();
        let pause = *interval.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = current.nudge.notified() => {}
            // A new interval starts now.
            _ = interval.changed() => continue,
        }
        current.check().await;
    }
}

/// A stream's hold on its credential; dropping it lets the credential go unless another stream
/// holds it.
pub(crate) struct WatchedCredential {
    watch: Arc<CredentialWatch>,
    credential: Revocable,
    withdrawn: watch::Receiver<Option<Withdrawn>>,
}

impl WatchedCredential {
    /// Resolves, with the status that ends the stream, once the credential is withdrawn.
    pub async fn withdrawn(&mut self) -> Status {
        let reason = self
            .withdrawn
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.as_ref().map(ToString::to_string));
        match reason {
            Ok(reason) => Status::unauthenticated(reason.unwrap_or_default()),
            // The watch holds the sender as long as this guard lives.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for WatchedCredential {
    fn drop(&mut self) {
        let mut entries = self.watch.entries.lock().expect("credential watch lock");
        if let Some(entry) = entries.get_mut(&self.credential) {
            entry.streams -= 1;
            if entry.streams == 0 {
                entries.remove(&self.credential);
            }
        }
    }
}
