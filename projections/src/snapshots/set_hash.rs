//! The version of a set of resources (names and versions) that a stream can keep up to date as
//! it adds and removes members, without going over the whole set again.
//!
//! Each member counts as a 128-bit hash of its name and version; the set is the wrapping sum of
//! those and its size, so adding, removing or replacing a member costs one hash whatever the size
//! of the set, and equal sets have equal values whichever order, stream or replica computed them.
//! The value detects change; it is not a seal against someone crafting colliding sets.

use sha2::{Digest as _, Sha256};

use super::model::short_hex;

/// A set of `(name, version)` members, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SetHash {
    sum: u128,
    count: u64,
}

/// One member's share of a [`SetHash`].
pub fn member_hash(name: &str, version: &str) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(version.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(bytes)
}

impl SetHash {
    /// The set of `members`.
    pub fn of<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut set = Self::default();
        for (name, version) in members {
            set.add(member_hash(name, version));
        }
        set
    }

    /// Adds the member whose hash is `member`.
    pub fn add(&mut self, member: u128) {
        self.sum = self.sum.wrapping_add(member);
        self.count += 1;
    }

    /// Removes the member whose hash is `member` (it must be in the set).
    pub fn remove(&mut self, member: u128) {
        self.sum = self.sum.wrapping_sub(member);
        self.count = self.count.saturating_sub(1);
    }

    /// How many members the set has.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The set's version as responses carry it: 16 hex digits.
    pub fn version(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.sum.to_le_bytes());
        hasher.update(self.count.to_le_bytes());
        short_hex(&hasher.finalize())
    }
}

/// The version of a set of resources: equal sets have equal versions whichever stream, replica or
/// protocol computes it (see [`SetHash`]).
pub fn set_version<'a>(resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    SetHash::of(resources).version()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_version_depends_on_content_not_order() {
        let a = set_version([("a", "1"), ("b", "2")]);
        assert_eq!(a, set_version([("b", "2"), ("a", "1")]));
        assert_ne!(a, set_version([("a", "1"), ("b", "3")]));
        assert_ne!(a, set_version([("a", "1")]));
        assert_ne!(set_version([("ab", "")]), set_version([("a", "b")]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn a_set_kept_up_to_date_member_by_member_equals_the_set_summed_afresh() {
        let mut kept = SetHash::of([("a", "1"), ("b", "2"), ("c", "3")]);
        kept.remove(member_hash("b", "2"));
        kept.add(member_hash("b", "9"));
        kept.remove(member_hash("c", "3"));
        kept.add(member_hash("d", "4"));
        let afresh = SetHash::of([("d", "4"), ("b", "9"), ("a", "1")]);
        assert_eq!(kept, afresh);
        assert_eq!(kept.version(), afresh.version());
        assert_eq!(kept.len(), 3);
        assert!(SetHash::default().is_empty());
    }
}
