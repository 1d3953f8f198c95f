//! The tenant event feed's cursors (ADR 0014): a place in the feed's order, `(tx_id, source,
//! position)`, sealed with the tenant under the server's key and written as opaque URL-safe base64.
//! Another tenant's cursor, an altered one or one never handed out fails the seal.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use uuid::Uuid;

/// The event types the feed serves.
pub const EVENT_TYPES: [&str; 8] = [
    "commit",
    "proxy.status",
    "job.finished",
    "vm.state",
    "container.lifecycle",
    "rollout.progress",
    "alert.fired",
    "alert.resolved",
];

/// The log aggregates whose commits bring feed events: live readers wake when one rings.
pub const FEED_AGGREGATES: [&str; 3] = ["config", "vm", "rollout"];

/// Where the feed's events come from: their order after the transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The log (position: the event's global position).
    Log = 0,
    /// `feed_facts` (position: the row's).
    Facts = 1,
}

/// A place in the feed: after the event at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition {
    /// The writing transaction.
    pub tx_id: i64,
    /// Which source.
    pub source: Source,
    /// The position within the source.
    pub position: i64,
}

impl FeedPosition {
    /// Before every event.
    pub const START: Self = Self {
        tx_id: 0,
        source: Source::Log,
        position: 0,
    };
}

/// Why a cursor is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor at all.
    #[error("is not a cursor of this feed")]
    Malformed,
    /// Well-formed, but not sealed for this tenant by this server.
    #[error("is not a cursor this server handed out for this tenant")]
    Foreign,
}

const VERSION: u8 = 1;
const BODY: usize = 1 + 1 + 8 + 8;
const SEAL: usize = 16;

/// Seals cursors under one key.
#[derive(Clone)]
pub struct CursorSeal {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorSeal(..)")
    }
}

impl CursorSeal {
    /// A seal whose key is derived from `secret` (the server's shared secret), for this use only.
    #[must_use]
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"efms feed cursor v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, tenant_id: Uuid, body: &[u8]) -> [u8; SEAL] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(tenant_id.as_bytes());
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut seal = [0_u8; SEAL];
        seal.copy_from_slice(&digest[..SEAL]);
        seal
    }

    /// The cursor of `at` in `tenant_id`'s feed.
    #[must_use]
    pub fn seal(&self, tenant_id: Uuid, at: FeedPosition) -> String {
        let mut bytes = Vec::with_capacity(BODY + SEAL);
        bytes.push(VERSION);
        bytes.push(at.source as u8);
        bytes.extend_from_slice(&at.tx_id.to_be_bytes());
        bytes.extend_from_slice(&at.position.to_be_bytes());
        let seal = self.mac(tenant_id, &bytes);
        bytes.extend_from_slice(&seal);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The place `cursor` stands for in `tenant_id`'s feed.
    pub fn open(&self, tenant_id: Uuid, cursor: &str) -> Result<FeedPosition, CursorError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor.trim())
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() != BODY + SEAL || bytes[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let (body, seal) = bytes.split_at(BODY);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(tenant_id.as_bytes());
        mac.update(body);
        mac.verify_truncated_left(seal)
            .map_err(|_| CursorError::Foreign)?;
        let source = match body[1] {
            0 => Source::Log,
            1 => Source::Facts,
            _ => return Err(CursorError::Malformed),
        };
        let number = |range: std::ops::Range<usize>| {
            let mut eight = [0_u8; 8];
            eight.copy_from_slice(&body[range]);
            i64::from_be_bytes(eight)
        };
        Ok(FeedPosition {
            tx_id: number(2..10),
            source,
            position: number(10..18),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_for_its_tenant_only_and_not_once_altered() {
        let seal = CursorSeal::from_secret(b"a server secret of enough length!");
        let tenant = Uuid::from_u128(7);
        let at = FeedPosition {
            tx_id: 912,
            source: Source::Log,
            position: 40_011,
        };
        let cursor = seal.seal(tenant, at);
        assert_eq!(seal.open(tenant, &cursor), Ok(at));
        assert_eq!(
            seal.open(Uuid::from_u128(8), &cursor),
            Err(CursorError::Foreign)
        );
        let other_server = CursorSeal::from_secret(b"another server secret, as long!!!");
        assert_eq!(
            other_server.open(tenant, &cursor),
            Err(CursorError::Foreign)
        );
        let mut altered = cursor.into_bytes();
        altered[4] = if altered[4] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(seal.open(tenant, &altered), Err(CursorError::Foreign));
        assert_eq!(
            seal.open(tenant, "not a cursor"),
            Err(CursorError::Malformed)
        );
        assert_eq!(seal.open(tenant, ""), Err(CursorError::Malformed));
    }
}
