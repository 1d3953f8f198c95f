//! Where each proxy stands against what it should run (NFR-OB-004): in sync, behind (what was
//! sent to it not accepted in time), refusing it, holding something else than it accepted (its
//! `config_dump` read on its VM), or not connected at all.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use efms_domain::fleet::config_check::short_type;

use crate::proxies::{ProxyRow, SyncState, TypeStatusRow};

/// A proxy's drift state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DriftState {
    /// Connected, and it accepted what it was sent (or was sent it less than the grace ago).
    InSync,
    /// Connected, and what it was sent is not accepted after the grace.
    Behind,
    /// It refused what it was sent.
    Nacked,
    /// Its `config_dump`, read by the agent on its VM, holds another version than it accepted:
    /// configuration changed behind the control plane's back.
    Diverged,
    /// No stream of it is open.
    Disconnected,
}

/// A proxy's drift: its state, since when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The state.
    pub state: DriftState,
    /// Since when (for states other than in sync).
    pub since: Option<DateTime<Utc>>,
    /// Why: Envoy's error for a refusal, what was not accepted, or the disconnection.
    pub why: Option<String>,
}

/// How long a check finding a proxy diverged stands without a newer one (its agent gone, say).
pub const CONFIG_CHECK_STANDS: Duration = Duration::minutes(10);

/// The drift of proxy `row` with its per-type statuses `types` at `now`: a proxy that has not
/// accepted a version `grace` after it was sent is behind.
#[must_use]
pub fn drift(
    row: &ProxyRow,
    types: &[TypeStatusRow],
    now: DateTime<Utc>,
    grace: Duration,
) -> Drift {
    if row.streams <= 0 {
        return Drift {
            state: DriftState::Disconnected,
            since: row.disconnected_at.or(Some(row.last_seen_at)),
            why: Some("no stream of the proxy is open".to_owned()),
        };
    }
    if let Some(refused) = types
        .iter()
        .filter(|status| status.state() == SyncState::Nacked)
        .max_by_key(|status| status.nacked_at)
    {
        return Drift {
            state: DriftState::Nacked,
            since: refused.nacked_at,
            why: Some(format!(
                "{} refused: {}",
                short_type(&refused.type_url),
                refused.error_detail.as_deref().unwrap_or("no detail")
            )),
        };
    }
    if let (Some(why), Some(checked)) = (&row.config_diverged, row.config_checked_at) {
        if now - checked < CONFIG_CHECK_STANDS {
            return Drift {
                state: DriftState::Diverged,
                since: row.config_diverged_since,
                why: Some(format!("its config_dump differs: {why}")),
            };
        }
    }
    if let Some(waiting) = types
        .iter()
        .filter(|status| status.state() == SyncState::Stale)
        .filter(|status| status.sent_at.is_some_and(|sent| now - sent >= grace))
        .min_by_key(|status| status.sent_at)
    {
        return Drift {
            state: DriftState::Behind,
            since: waiting.sent_at,
            why: Some(format!(
                "{} of revision {} sent and not accepted",
                short_type(&waiting.type_url),
                waiting
                    .sent_revision
                    .map_or_else(|| "?".to_owned(), |revision| revision.to_string())
            )),
        };
    }
    Drift {
        state: DriftState::InSync,
        since: None,
        why: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(streams: i32) -> ProxyRow {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        ProxyRow {
            node_id: "edge-1".to_owned(),
            group_name: Some("edge".to_owned()),
            node_cluster: "edge".to_owned(),
            envoy_version: None,
            protocol: "sotw".to_owned(),
            streams,
            connected_at: at,
            disconnected_at: (streams == 0).then_some(at),
            last_seen_at: at,
            config_checked_at: None,
            config_diverged: None,
            config_diverged_since: None,
        }
    }

    fn status(sent: &str, acked: Option<&str>, nacked: Option<&str>, at: i64) -> TypeStatusRow {
        let when = DateTime::from_timestamp(at, 0);
        TypeStatusRow {
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".to_owned(),
            sent_version: Some(sent.to_owned()),
            sent_revision: Some(7),
            sent_at: when,
            acked_version: acked.map(str::to_owned),
            acked_revision: acked.map(|_| 7),
            acked_at: acked.and(when),
            nacked_version: nacked.map(str::to_owned),
            nacked_at: nacked.and(when),
            error_detail: nacked.map(|_| "port taken".to_owned()),
        }
    }

    #[test]
    fn a_proxy_without_a_stream_is_disconnected_whatever_it_accepted() {
        let acked = status("v7", Some("v7"), None, 1_800_000_000);
        let now = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let drift = drift(&proxy(0), &[acked], now, Duration::seconds(10));
        assert_eq!(drift.state, DriftState::Disconnected);
    }

    #[test]
    fn a_refusal_is_nacked_with_envoys_words_and_a_late_acceptance_is_behind() {
        let now = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let refused = status("v7", None, Some("v7"), 1_800_000_000);
        let nacked = drift(&proxy(1), &[refused], now, Duration::seconds(10));
        assert_eq!(nacked.state, DriftState::Nacked);
        assert!(nacked.why.unwrap().contains("port taken"));
        let waiting = status("v7", None, None, 1_800_000_000);
        let late = drift(
            &proxy(1),
            std::slice::from_ref(&waiting),
            now,
            Duration::seconds(10),
        );
        assert_eq!(late.state, DriftState::Behind);
        let soon = DateTime::from_timestamp(1_800_000_005, 0).unwrap();
        let fresh = drift(&proxy(1), &[waiting], soon, Duration::seconds(10));
        assert_eq!(fresh.state, DriftState::InSync);
    }

    #[test]
    fn a_config_dump_found_different_is_diverged_until_the_check_is_too_old_to_stand() {
        let acked = status("v7", Some("v7"), None, 1_800_000_000);
        let mut row = proxy(1);
        row.config_checked_at = DateTime::from_timestamp(1_800_000_060, 0);
        row.config_diverged = Some("container `abc` holds cluster version none".to_owned());
        row.config_diverged_since = row.config_checked_at;
        let now = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let diverged = drift(
            &row,
            std::slice::from_ref(&acked),
            now,
            Duration::seconds(10),
        );
        assert_eq!(diverged.state, DriftState::Diverged);
        assert!(diverged.why.unwrap().contains("container `abc`"));
        let later = now + CONFIG_CHECK_STANDS;
        assert_eq!(
            drift(&row, &[acked], later, Duration::seconds(10)).state,
            DriftState::InSync
        );
    }
}
