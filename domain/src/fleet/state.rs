//! A VM's state and the rule of its changes.
//!
//! ```text
//! (registered) ─▶ down ──heartbeat, engine up──▶ ready ──no heartbeat for interval+grace──▶ down
//!                   │                              │  ▲
//!                   │        heartbeat, engine down│  │heartbeat, engine up
//!                   └──────────────────────────▶ docker_unreachable ──no heartbeat──▶ down
//! any ──DELETE──▶ removed (final)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often agents send a heartbeat unless set otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How long past the interval a VM stays up without a heartbeat unless set otherwise.
pub const DEFAULT_HEARTBEAT_GRACE: Duration = Duration::from_secs(20);

/// Where a VM stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// No heartbeat within the interval and its grace (or never connected).
    #[default]
    Down,
    /// Heartbeats arrive and the Docker engine answers.
    Ready,
    /// Heartbeats arrive, the Docker engine does not answer.
    DockerUnreachable,
    /// Deleted: final.
    Removed,
}

impl VmState {
    /// The name as the API and the read models spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Ready => "ready",
            Self::DockerUnreachable => "docker_unreachable",
            Self::Removed => "removed",
        }
    }

    /// Parses a name as [`as_str`](Self::as_str) spells it.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Down,
            Self::Ready,
            Self::DockerUnreachable,
            Self::Removed,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    /// The state after a heartbeat that says whether the engine answers; `None`: unchanged.
    pub fn after_heartbeat(self, engine_reachable: bool) -> Option<Self> {
        let next = if engine_reachable {
            Self::Ready
        } else {
            Self::DockerUnreachable
        };
        (self != Self::Removed && self != next).then_some(next)
    }

    /// The state once the heartbeat is overdue; `None`: unchanged.
    pub fn after_silence(self) -> Option<Self> {
        matches!(self, Self::Ready | Self::DockerUnreachable).then_some(Self::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_makes_a_down_vm_ready_or_docker_unreachable_by_its_engine() {
        assert_eq!(VmState::Down.after_heartbeat(true), Some(VmState::Ready));
        assert_eq!(
            VmState::Down.after_heartbeat(false),
            Some(VmState::DockerUnreachable)
        );
        assert_eq!(
            VmState::Ready.after_heartbeat(false),
            Some(VmState::DockerUnreachable)
        );
        assert_eq!(
            VmState::DockerUnreachable.after_heartbeat(true),
            Some(VmState::Ready)
        );
    }

    #[test]
    fn a_heartbeat_that_changes_nothing_or_comes_after_removal_changes_no_state() {
        assert_eq!(VmState::Ready.after_heartbeat(true), None);
        assert_eq!(VmState::DockerUnreachable.after_heartbeat(false), None);
        assert_eq!(VmState::Removed.after_heartbeat(true), None);
    }

    #[test]
    fn silence_takes_a_live_vm_down_and_leaves_down_and_removed_alone() {
        assert_eq!(VmState::Ready.after_silence(), Some(VmState::Down));
        assert_eq!(
            VmState::DockerUnreachable.after_silence(),
            Some(VmState::Down)
        );
        assert_eq!(VmState::Down.after_silence(), None);
        assert_eq!(VmState::Removed.after_silence(), None);
    }

    #[test]
    fn every_state_parses_from_its_name() {
        for state in [
            VmState::Down,
            VmState::Ready,
            VmState::DockerUnreachable,
            VmState::Removed,
        ] {
            assert_eq!(VmState::parse(state.as_str()), Some(state));
        }
        assert_eq!(VmState::parse("up"), None);
    }
}
