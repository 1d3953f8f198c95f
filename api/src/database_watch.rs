//! Whether the database answers, watched by a probe on a connection of its own, so that while it
//! does not every request fails fast (503 with `Retry-After`) instead of waiting for a pooled
//! connection that cannot come, and `/readyz` says why (NFR-AV-004). Recovery needs nothing: the
//! probe keeps trying, and the pool opens new connections once the database is back.
//!
//! A refused or broken connection counts as down at once (the database stopped or restarted); a
//! probe that gets no answer within [`PROBE_TIMEOUT`] counts only when the next one gets none
//! either, so that a busy database is not taken for a lost one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use tokio::sync::watch;

/// How often the probe asks the database.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes in a row without an answer before the database counts as down.
const SILENT_PROBES_TO_DOWN: u32 = 2;

/// What the probe last found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseState {
    /// The database answers.
    Up,
    /// It does not, since `since`.
    Down {
        /// When the probe first found it so.
        since: DateTime<Utc>,
        /// What the probe got.
        error: String,
    },
}

/// The probe's findings, for requests and readiness to consult. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DatabaseWatch(watch::Receiver<DatabaseState>);

impl DatabaseWatch {
    /// Probes the database `options` names every [`PROBE_INTERVAL`] until `shutdown` resolves.
    /// The database counts as up until a probe finds otherwise.
    pub fn spawn(
        options: PgConnectOptions,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        let (state, watch) = watch::channel(DatabaseState::Up);
        tokio::spawn(async move {
            tokio::select! {
                () = probe_forever(&options, &state) => {}
                () = shutdown => {}
            }
        });
        Self(watch)
    }

    /// What the probe last found.
    pub fn current(&self) -> DatabaseState {
        self.0.borrow().clone()
    }

    /// Resolves once the database is found down (at once if it is): when, and what was found.
    pub async fn down(&self) -> (DateTime<Utc>, String) {
        let mut watch = self.0.clone();
        let Ok(state) = watch
            .wait_for(|state| matches!(state, DatabaseState::Down { .. }))
            .await
        else {
            // The probe stopped with the process: nothing more will be found.
            return std::future::pending().await;
        };
        match &*state {
            DatabaseState::Down { since, error } => (*since, error.clone()),
            DatabaseState::Up => unreachable!("waited for a state that is down"),
        }
    }
}

async fn probe_forever(options: &PgConnectOptions, state: &watch::Sender<DatabaseState>) {
    let mut connection: Option<PgConnection> = None;
    let mut silent = 0;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let found = match tokio::time::timeout(PROBE_TIMEOUT, probe(&mut connection, options)).await
        {
            Ok(Ok(())) => {
                silent = 0;
                None
            }
            Ok(Err(error)) => {
                connection = None;
                Some(error.to_string())
            }
            Err(_) => {
                connection = None;
                silent += 1;
                (silent >= SILENT_PROBES_TO_DOWN).then(|| {
                    format!(
                        "no answer within {} ms, {silent} times in a row",
                        PROBE_TIMEOUT.as_millis()
                    )
                })
            }
        };
        state.send_if_modified(|current| match (&*current, found) {
            (DatabaseState::Up, Some(error)) => {
                tracing::error!(%error, "the database does not answer: requests fail fast until it does");
                *current = DatabaseState::Down {
                    since: Utc::now(),
                    error,
                };
                true
            }
            (DatabaseState::Down { since, .. }, None) if silent == 0 => {
                tracing::info!(%since, "the database answers again");
                *current = DatabaseState::Up;
                true
            }
            _ => false,
        });
    }
}

/// One probe: a ping on the probe's own connection, opened first when there is none.
async fn probe(
    connection: &mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> Result<(), sqlx::Error> {
    let open = match connection {
        Some(open) => open,
        None => connection.insert(options.connect().await?),
    };
    open.ping().await
}
