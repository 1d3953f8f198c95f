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
        for (deleted_key, _) in overlay.iter().filter(|(_, state)| state.is_none()) {
            let (kind, name) = split_key(deleted_key);
            let target = ResourceRef {
                kind,
                name: name.to_owned(),
            };
            let by: Vec<ResourceRef> = self
                .after(overlay)
                .filter(|(_, state)| state.refs.contains(&target))
                .map(|(k, _)| {
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

    /// Every resource as it would be after the commit.
    fn after<'a>(
        &'a self,
        overlay: &'a BTreeMap<String, Option<ResourceState>>,
    ) -> impl Iterator<Item = (&'a String, &'a ResourceState)> + 'a {
        let unchanged = self
            .resources
            .iter()
            .filter(|(k, _)| !overlay.contains_key(*k));
        let changed = overlay
            .iter()
            .filter_map(|(k, state)| state.as_ref().map(|s| (k, s)));
        unchanged.chain(changed)
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
