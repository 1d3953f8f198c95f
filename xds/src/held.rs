//! What a delta stream's proxy holds of one resource type, as far as the stream knows.
//!
//! Most proxies hold exactly their group's current set, so the view is a snapshot's set, shared
//! with the snapshot (no copy per stream), plus the few names where the proxy differs from it:
//! removals held back, responses refused, what a proxy brought from its previous stream. The
//! whole set is kept summed (see [`SetHash`]), so its version after a push is known from what the
//! push changes, not from everything held.

use std::collections::BTreeMap;
use std::sync::Arc;

use efms_projections::snapshots::{member_hash, KindResources, SetHash};
use efms_projections::XdsResource;

/// The names and versions a proxy holds of one type.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// A snapshot's set of the type, shared.
    base: KindResources,
    /// That set, summed.
    base_set: SetHash,
    /// Where the proxy differs from `base`: the version it holds, or `None` for a name of `base`
    /// it does not hold.
    overlay: BTreeMap<String, Option<String>>,
    /// What the proxy holds, summed.
    set: SetHash,
}

impl Held {
    /// A proxy holding `versions` (by name).
    pub fn from_versions(versions: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut held = Self::default();
        for (name, version) in versions {
            held.put(&name, Some(&version));
        }
        held
    }

    /// What the proxy holds, summed.
    pub fn set(&self) -> SetHash {
        self.set
    }

    /// The snapshot set the view is based on, summed.
    pub fn base_set(&self) -> SetHash {
        self.base_set
    }

    /// The version of `name` the proxy holds.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.overlay.get(name) {
            Some(held) => held.as_deref(),
            None => self
                .base
                .get(name)
                .map(|resource| resource.version.as_str()),
        }
    }

    /// The names the proxy holds.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        let from_base = self
            .base
            .keys()
            .filter(|name| !matches!(self.overlay.get(*name), Some(None)));
        let beside_base = self
            .overlay
            .iter()
            .filter(|(name, held)| held.is_some() && !self.base.contains_key(*name))
            .map(|(name, _)| name);
        from_base.chain(beside_base)
    }

    /// The names where the proxy differs from the base set.
    pub fn differences(&self) -> impl Iterator<Item = &String> {
        self.overlay.keys()
    }

    /// The share of what the proxy holds of `name` in [`Held::set`].
    fn member(&self, name: &str) -> Option<u128> {
        match self.overlay.get(name) {
            Some(Some(version)) => Some(member_hash(name, version)),
            Some(None) => None,
            None => self.base.get(name).map(|resource| resource.member),
        }
    }

    /// Records that the proxy holds `version` of `name` (`None`: nothing).
    pub fn put(&mut self, name: &str, version: Option<&str>) {
        if let Some(old) = self.member(name) {
            self.set.remove(old);
        }
        if let Some(version) = version {
            self.set.add(member_hash(name, version));
        }
        if self
            .base
            .get(name)
            .map(|resource| resource.version.as_str())
            == version
        {
            self.overlay.remove(name);
        } else {
            self.overlay
                .insert(name.to_owned(), version.map(str::to_owned));
        }
    }

    /// What the proxy would hold after `updated` and `removed`, summed; nothing changes.
    pub fn set_after(&self, updated: &[Arc<XdsResource>], removed: &[String]) -> SetHash {
        let mut set = self.set;
        for resource in updated {
            if let Some(old) = self.member(&resource.name) {
                set.remove(old);
            }
            set.add(resource.member);
        }
        for name in removed {
            if let Some(old) = self.member(name) {
                set.remove(old);
            }
        }
        set
    }

    /// Records that the proxy was sent `updated` and `removed`.
    pub fn apply(&mut self, updated: &[Arc<XdsResource>], removed: &[String]) {
        for resource in updated {
            self.put(&resource.name, Some(&resource.version));
        }
        for name in removed {
            self.put(name, None);
        }
    }

    /// Bases the view on `base` (a snapshot's set, summed as `base_set`) without changing what it
    /// says the proxy holds. `changed` must name every name where the old base and the new differ.
    pub fn rebase(&mut self, base: KindResources, base_set: SetHash, changed: &[String]) {
        let mut overlay = BTreeMap::new();
        for name in self.overlay.keys().chain(changed) {
            let held = self.get(name);
            if base.get(name).map(|resource| resource.version.as_str()) != held {
                overlay.insert(name.clone(), held.map(str::to_owned));
            }
        }
        self.overlay = overlay;
        self.base = base;
        self.base_set = base_set;
    }

    /// Bases the view on `base` (summed as `base_set`) when the proxy holds exactly that.
    pub fn adopt_if_equal(&mut self, base: &KindResources, base_set: SetHash) {
        if self.set == base_set && (self.base_set != base_set || !self.overlay.is_empty()) {
            self.base = base.clone();
            self.base_set = base_set;
            self.overlay.clear();
        }
    }

    /// Forgets what the proxy holds outside what `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.names().filter(|name| !keep(name)).cloned().collect();
        for name in gone {
            self.put(&name, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use efms_domain::envoy::ResourceKind;

    fn set_of(members: &[(&str, &str)]) -> (KindResources, SetHash) {
        let resources: BTreeMap<String, Arc<XdsResource>> = members
            .iter()
            .map(|(name, version)| {
                let resource = XdsResource::new(
                    ResourceKind::Cluster,
                    (*name).into(),
                    (*version).into(),
                    b"",
                );
                ((*name).to_owned(), Arc::new(resource))
            })
            .collect();
        let set = SetHash::of(members.iter().copied());
        (Arc::new(resources), set)
    }

    fn contents(held: &Held) -> Vec<(String, String)> {
        let mut names: Vec<_> = held
            .names()
            .map(|name| (name.clone(), held.get(name).unwrap_or_default().to_owned()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_view_based_on_a_snapshot_and_rebased_on_the_next_holds_what_it_held() {
        let (first, first_set) = set_of(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let (second, second_set) = set_of(&[("a", "1"), ("b", "2"), ("d", "1")]);
        let mut held = Held::default();
        held.adopt_if_equal(&first, first_set);
        assert!(
            held.base_set().is_empty(),
            "it held nothing, so nothing was adopted"
        );
        held = Held::from_versions(
            [("a", "1"), ("b", "1"), ("c", "1")].map(|(n, v)| (n.into(), v.into())),
        );
        held.adopt_if_equal(&first, first_set);
        assert_eq!(held.base_set(), first_set);
        held.put("c", Some(""));
        let before = contents(&held);
        let changed = ["b".to_owned(), "c".to_owned(), "d".to_owned()];
        held.rebase(second.clone(), second_set, &changed);
        assert_eq!(contents(&held), before);
        assert_eq!(held.set(), SetHash::of([("a", "1"), ("b", "1"), ("c", "")]));

        let updated: Vec<_> = ["b", "d"]
            .iter()
            .map(|name| second[*name].clone())
            .collect();
        let removed = vec!["c".to_owned()];
        let after = held.set_after(&updated, &removed);
        held.apply(&updated, &removed);
        assert_eq!(held.set(), after);
        assert_eq!(after, second_set);
        assert_eq!(held.differences().count(), 0);
    }

    #[test]
    fn retaining_forgets_names_beside_and_inside_the_base() {
        let (base, base_set) = set_of(&[("a", "1"), ("b", "1")]);
        let mut held =
            Held::from_versions([("a", "1"), ("b", "1")].map(|(n, v)| (n.into(), v.into())));
        held.adopt_if_equal(&base, base_set);
        held.put("z", Some("9"));
        held.retain(|name| name == "b");
        assert_eq!(contents(&held), vec![("b".to_owned(), "1".to_owned())]);
        assert_eq!(held.set(), SetHash::of([("b", "1")]));
    }
}
