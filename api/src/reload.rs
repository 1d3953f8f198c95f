//! What a running `efms serve` reads again without a restart (DPL-CM-002), on SIGHUP and whenever
//! one of the files changes (looked at every few seconds): the TLS certificate and key, and the
//! settings file (`EFMS_SETTINGS_FILE`) for what the environment cannot change in a running
//! process, the log filter. What does not make sense is refused with a log line naming the
//! setting at fault, and what is in use stays.

use std::time::{Duration, SystemTime};

use efms_xds::tls::TlsIdentity;
use serde::Deserialize;

use crate::logging::SetLogFilter;

/// How often the files' modification times are looked at.
pub const FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Calls `reload` on SIGHUP and whenever one of `files` changes, until `stopped` resolves.
pub fn watch(
    files: Vec<String>,
    reload: impl Fn() + Send + 'static,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::pin!(stopped);
        let mut hangups = hangups();
        let mut seen = modified(&files);
        loop {
            let asked = tokio::select! {
                () = &mut stopped => return,
                () = tokio::time::sleep(FILE_CHECK_EVERY) => false,
                () = next_hangup(&mut hangups) => true,
            };
            let now = modified(&files);
            if !asked && now == seen {
                continue;
            }
            seen = now;
            reload();
        }
    });
}

/// Reads the certificate and key again and serves them, or says why not and keeps the pair in
/// use.
pub fn tls(identity: &TlsIdentity, cert: &str, key: &str) {
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

/// The settings file: JSON, every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    /// The log filter, as `EFMS_LOG` takes it (such as `info,efms_xds=debug`).
    log: Option<String>,
}

/// Reads the settings file at `path` and applies it, or says why not and keeps what is in use.
pub fn settings_file(path: &str, set_log_filter: &SetLogFilter) {
    let applied = read_settings(path).and_then(|filter| match filter {
        Some(filter) => set_log_filter(&filter)
            .map(|()| filter)
            .map_err(|error| format!("`log`: {error}")),
        None => Ok(String::new()),
    });
    match applied {
        Ok(filter) => tracing::info!(path, log = filter, "settings file applied"),
        Err(error) => {
            tracing::error!(path, %error, "the settings file is refused; the settings in use stay");
        }
    }
}

/// The log filter the settings file at `path` names, if it names one.
fn read_settings(path: &str) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read it: {error}"))?;
    let settings: SettingsFile =
        serde_json::from_str(&text).map_err(|error| format!("not the settings' JSON: {error}"))?;
    Ok(settings.log)
}

fn modified(files: &[String]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
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
            tracing::warn!(%error, "cannot listen for SIGHUP; the files are still watched");
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

#[cfg(test)]
mod tests {
    use super::read_settings;

    #[test]
    fn a_settings_file_names_a_log_filter_or_is_refused_saying_why() {
        let dir = std::env::temp_dir().join(format!("efms-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("settings.json");
        let path = path.to_str().unwrap();
        std::fs::write(path, r#"{"log": "warn,efms_api=debug"}"#).unwrap();
        assert_eq!(
            read_settings(path),
            Ok(Some("warn,efms_api=debug".to_owned()))
        );
        std::fs::write(path, "{}").unwrap();
        assert_eq!(read_settings(path), Ok(None));
        std::fs::write(path, r#"{"logs": "debug"}"#).unwrap();
        assert!(read_settings(path)
            .unwrap_err()
            .contains("unknown field `logs`"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_settings(path)
            .unwrap_err()
            .starts_with("cannot read it"));
    }
}
