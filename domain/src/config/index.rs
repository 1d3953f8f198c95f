//! What the configuration repository keeps besides its resources, so that a commit's checks look
//! only at what the commit touches: who refers to a resource (to refuse deleting what is still
//! used), which resources are declared from a template (to render them again when it changes),
//! and how many resources of each kind there are (for the quota on them).
//! Derived from the resources, never stored: rebuilt when a state is loaded from a snapshot.

use std::collections::{BTreeMap, BTreeSet};

use super::aggregate::{split_key, ResourceState};
use super::refs::ResourceRef;
use crate::envoy::ResourceKind;

/// The reverse indexes of a repository's resources, keyed like it (`kind/name`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Index {
    /// For each resource referred to, the keys of the resources that refer to it.
    referrers: BTreeMap<ResourceRef, BTreeSet<String>>,
    /// For each template name, the keys of the resources declared from it.
    derived: BTreeMap<String, BTreeSet<String>>,
    /// How many resources of each kind there are.
    counts: BTreeMap<ResourceKind, usize>,
}

impl Index {
    /// The index of `resources`.
    pub(super) fn of(resources: &BTreeMap<String, ResourceState>) -> Self {
        let mut index = Self::default();
        for (key, state) in resources {
            index.add(key, state);
        }
        index
    }

    /// Records what the resource `key` refers to and is declared from.
    pub(super) fn add(&mut self, key: &str, state: &ResourceState) {
        *self.counts.entry(split_key(key).0).or_default() += 1;
        for target in &state.refs {
            self.referrers
                .entry(target.clone())
                .or_default()
                .insert(key.to_owned());
        }
        if let Some(derivation) = &state.derivation {
            self.derived
                .entry(derivation.template.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }

    /// Forgets what the resource `key` referred to and was declared from.
    pub(super) fn remove(&mut self, key: &str, state: &ResourceState) {
        if let Some(count) = self.counts.get_mut(&split_key(key).0) {
            *count = count.saturating_sub(1);
        }
        for target in &state.refs {
            if let Some(keys) = self.referrers.get_mut(target) {
                keys.remove(key);
                if keys.is_empty() {
                    self.referrers.remove(target);
                }
            }
        }
        if let Some(derivation) = &state.derivation {
            if let Some(keys) = self.derived.get_mut(&derivation.template) {
                keys.remove(key);
                if keys.is_empty() {
                    self.derived.remove(&derivation.template);
                }
            }
        }
    }

    /// How many resources of `kind` there are.
    pub(super) fn count(&self, kind: ResourceKind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// The keys of the resources that refer to `target`.
    pub(super) fn referrers(&self, target: &ResourceRef) -> impl Iterator<Item = &String> + '_ {
        self.referrers.get(target).into_iter().flatten()
    }

    /// The keys of the resources declared from the template `name`.
    pub(super) fn derived_from(&self, name: &str) -> impl Iterator<Item = &String> + '_ {
        self.derived.get(name).into_iter().flatten()
    }
}
