//! The rules every commit of a configuration repository must keep: each change finds the state it
//! expects, no reference dangles, no deleted resource is still referred to, groups form no cycle,
//! and no secret material is stored in clear.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::aggregate::{key, split_key, ConfigRepo, ResourceState};
use super::commands::Expect;
use super::errors::ConfigError;
use super::refs::ResourceRef;
use super::shared::{self, Shared};
use super::template;
use crate::envoy::{self, ResourceKind, Violation};

impl ConfigRepo {
    /// No resource may refer to a missing one after the commit, and no deleted resource may still
    /// be referred to.
    pub(super) fn check_references(
        &self,
        shared: &Shared,
        overlay: &BTreeMap<String, Option<ResourceState>>,
    ) -> Result<(), ConfigError> {
        let exists = |r: &ResourceRef| {
            if shared::split_qualified(&r.name).is_some() {
                return shared.contains(r);
            }
            let k = key(r.kind, &r.name);
            match overlay.get(&k) {
                Some(state) => state.is_some(),
                None => self.resources.contains_key(&k),
            }
        };
        let deleted: Vec<&String> = overlay
            .iter()
            .filter(|(_, state)| state.is_none())
            .map(|(k, _)| k)
            .collect();
        if !deleted.is_empty() {
            // Who refers to what among the changed resources, as the commit leaves them.
            let mut changed_referrers: BTreeMap<&ResourceRef, Vec<&String>> = BTreeMap::new();
            for (k, state) in overlay {
                for target in state.iter().flat_map(|s| &s.refs) {
                    changed_referrers.entry(target).or_default().push(k);
                }
            }
            for deleted_key in deleted {
                let (kind, name) = split_key(deleted_key);
                let target = ResourceRef {
                    kind,
                    name: name.to_owned(),
                };
                let unchanged = self
                    .index
                    .referrers(&target)
                    .filter(|k| !overlay.contains_key(*k));
                let changed = changed_referrers
                    .get(&target)
                    .into_iter()
                    .flatten()
                    .copied();
                let by: Vec<ResourceRef> = unchanged
                    .chain(changed)
                    .map(|k| {
                        let (kind, name) = split_key(k);
                        ResourceRef {
                            kind,
                            name: name.to_owned(),
                        }
                    })
                    .collect();
                if !by.is_empty() {
                    return Err(ConfigError::StillReferenced {
                        kind,
                        name: name.to_owned(),
                        by,
                    });
                }
            }
        }
        let mut dangling = Vec::new();
        for (changed_key, state) in overlay {
            let Some(state) = state else { continue };
            let (kind, name) = split_key(changed_key);
            for target in state.refs.iter().filter(|r| !exists(r)) {
                dangling.push((
                    ResourceRef {
                        kind,
                        name: name.to_owned(),
                    },
                    target.clone(),
                ));
            }
        }
        if !dangling.is_empty() {
            return Err(ConfigError::DanglingReferences(dangling));
        }
        self.check_group_cycles(overlay)
    }

    /// No kind the commit grows may pass the quota of resources per kind; counted from what the
    /// commit changes and the counts kept in the index.
    pub(super) fn check_quota(
        &self,
        limit: u32,
        overlay: &BTreeMap<String, Option<ResourceState>>,
    ) -> Result<(), ConfigError> {
        let mut delta: BTreeMap<ResourceKind, i64> = BTreeMap::new();
        for (changed_key, state) in overlay {
            let before = self.resources.contains_key(changed_key);
            let step = match (before, state.is_some()) {
                (false, true) => 1,
                (true, false) => -1,
                _ => 0,
            };
            *delta.entry(split_key(changed_key).0).or_default() += step;
        }
        for (kind, step) in delta.into_iter().filter(|(_, step)| *step > 0) {
            let after = self.index.count(kind) + usize::try_from(step).unwrap_or(usize::MAX);
            if after > limit as usize {
                return Err(ConfigError::QuotaExceeded { kind, limit, after });
            }
        }
        Ok(())
    }

    /// No chain of parents that passes a changed group may come back to where it started.
    fn check_group_cycles(
        &self,
        overlay: &BTreeMap<String, Option<ResourceState>>,
    ) -> Result<(), ConfigError> {
        let parent_of = |name: &str| -> Option<String> {
            let k = key(ResourceKind::Group, name);
            let state = match overlay.get(&k) {
                Some(state) => state.as_ref(),
                None => self.resources.get(&k),
            }?;
            state
                .refs
                .iter()
                .find(|r| r.kind == ResourceKind::Group)
                .map(|r| r.name.clone())
        };
        for (changed_key, state) in overlay {
            if state.is_none() {
                continue;
            }
            let (kind, start) = split_key(changed_key);
            if kind != ResourceKind::Group {
                continue;
            }
            let mut chain = vec![start.to_owned()];
            let mut current = start.to_owned();
            while let Some(parent) = parent_of(&current) {
                chain.push(parent.clone());
                if parent == start {
                    return Err(ConfigError::GroupCycle(chain));
                }
                if chain.len() > 1_000 {
                    break;
                }
                current = parent;
            }
        }
        Ok(())
    }
}

/// No resource is stored with secret material in clear: the one rule of
/// [`envoy::sensitive::stored_material_violations`], whatever path wrote the document.
/// A template's body is held to it too, for the kind it makes: a placeholder where material would
/// stand is material in clear once rendered.
pub(super) fn check_material(
    kind: ResourceKind,
    name: &str,
    document: &Value,
) -> Result<(), ConfigError> {
    let violations = if kind == ResourceKind::Template {
        match template::TemplateSpec::deserialize(document) {
            Ok(spec) => envoy::sensitive::stored_material_violations(spec.kind, &spec.body)
                .into_iter()
                .map(|violation| Violation {
                    pointer: format!("/body{}", violation.pointer),
                    ..violation
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    } else {
        envoy::sensitive::stored_material_violations(kind, document)
    };
    if violations.is_empty() {
        return Ok(());
    }
    Err(ConfigError::SecretMaterial {
        kind,
        name: name.to_owned(),
        violations,
    })
}

/// Whether the resource's current state is what the change expects of it.
pub(super) fn check_expectation(
    expect: Expect,
    current: Option<&ResourceState>,
    kind: ResourceKind,
    name: &str,
) -> Result<(), ConfigError> {
    match (expect, current) {
        (Expect::Absent, Some(_)) => Err(ConfigError::AlreadyExists {
            kind,
            name: name.to_owned(),
        }),
        (Expect::Present | Expect::Version(_), None) => Err(ConfigError::NotFound {
            kind,
            name: name.to_owned(),
        }),
        (Expect::Version(expected), Some(state)) if state.version != expected => {
            Err(ConfigError::VersionMismatch {
                kind,
                name: name.to_owned(),
                expected,
                actual: state.version,
            })
        }
        _ => Ok(()),
    }
}
