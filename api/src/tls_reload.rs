//! Hot reload of the TLS certificate (DPL-CM-002): on SIGHUP, and when either file changes
//! (looked at every few seconds), the certificate and key are read again and, when they make a
//! valid pair, served to every new connection from then on; connections already open keep theirs.
//! A pair that does not make one is refused with a log line naming the file at fault, and the
//! certificate in use stays.

use std::time::{Duration, SystemTime};

use efms_xds::tls::TlsIdentity;

/// How often the files' modification times are looked at.
pub const FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Watches `cert` and `key` for `identity` until `stopped` resolves.
pub fn spawn(
    identity: TlsIdentity,
    (cert, key): (String, String),
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::pin!(stopped);
        let mut hangups = hangups();
        let mut seen = modified(&cert, &key);
        loop {
            let asked = tokio::select! {
                () = &mut stopped => return,
                () = tokio::time::sleep(FILE_CHECK_EVERY) => false,
                () = next_hangup(&mut hangups) => true,
            };
            let now = modified(&cert, &key);
            if !asked && now == seen {
                continue;
            }
            seen = now;
            reload(&identity, &cert, &key);
        }
    });
}

/// Reads the pair again and serves it, or says why not and keeps the one in use.
pub fn reload(identity: &TlsIdentity, cert: &str, key: &str) {
    match crate::settings::validate_tls(Some(cert), Some(key)) {
        Ok(Some(next)) => {
            identity.replace_with(&next);
            tracing::info!(cert, "TLS certificate reloaded: new connections get it");
        }
        Ok(None) => {}
        Err(error) => tracing::error!(
            error = %error,
            "the new TLS certificate or key is refused; the one in use stays"
        ),
    }
}

fn modified(cert: &str, key: &str) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |path: &str| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (at(cert), at(key))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS files are still watched");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    match hangups {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_hangups: &mut Hangups) {
    std::future::pending().await
}
