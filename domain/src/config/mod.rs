//! The configuration repository of a tenant (FR-EP, FR-VC): one event stream per tenant and branch,
//! like a git repository. Every command is a commit with an author and a message; it emits a
//! `Committed` header and one event per changed resource, all under one new revision, atomically.
//!
//! The aggregate keeps only what decisions need (per resource: version, content hash, references);
//! the documents travel in the events and live in the read models.

pub mod group;
pub mod inheritance;
pub mod limits;
pub mod merge;
mod refs;
pub mod shared;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use self::{limits::CommitContext, shared::Shared};
use crate::envoy::{self, ResourceKind, Violation};
pub use refs::{references, ResourceRef};
use template::Derivation;

/// The branch every tenant starts with.
pub const MAIN_BRANCH: &str = "main";

/// What a commit did, as its history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// A resource was created.
    Create,
    /// A resource was replaced (`PUT`).
    Replace,
    /// A resource was patched (`PATCH`).
    Patch,
    /// A resource was deleted.
    Delete,
    /// The repository, or one resource, went back to an earlier revision.
    Rollback,
    /// Many changes across kinds, applied together.
    Bulk,
    /// A branch was created from another branch's revision (its first commit).
    Branch,
    /// A branch's changes were merged in.
    Merge,
}

/// Where a branch starts: a branch and one of its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPoint {
    /// The branch.
    pub branch: String,
    /// The revision of that branch.
    pub revision: u64,
}

/// Whether `name` may name a new branch: 1 to 63 lower-case letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit, and not `main`.
pub fn valid_branch_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if name == MAIN_BRANCH {
        Err("`main` exists in every tenant and cannot be created".to_owned())
    } else if !starts_well || !rest_ok || name.len() > 63 {
        Err(format!(
            "`{name}` is not a branch name: 1 to 63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// What a change expects of the resource's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It must not exist (create).
    Absent,
    /// It must exist (replace, patch, delete).
    Present,
    /// It must exist at exactly this version (`If-Match`).
    Version(u64),
    /// Whatever it is (rollback).
    Anything,
}

/// One change in a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace a resource with a validated document.
    Put {
        /// The resource's kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// The canonical document.
        document: Value,
        /// What it refers to.
        refs: BTreeSet<ResourceRef>,
        /// What the current state must be.
        expect: Expect,
    },
    /// Delete a resource.
    Delete {
        /// The resource's kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// What the current state must be.
        expect: Expect,
    },
    /// Create or replace a resource declared from a template: rendered from the template as the
    /// repository holds it, then validated like a put.
    Derive {
        /// The resource's kind (the template's).
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// The template, parameter values and overrides.
        derivation: Derivation,
        /// What the current state must be.
        expect: Expect,
    },
}

impl Change {
    /// Validates `json` as a `kind` resource (against Envoy's schema, or as a group) and makes it
    /// a change.
    pub fn put(kind: ResourceKind, json: &Value, expect: Expect) -> Result<Self, Vec<Violation>> {
        let (name, document) = if kind == ResourceKind::Group {
            let (name, canonical, _) = group::validate(json)?;
            (name, canonical)
        } else if kind == ResourceKind::Template {
            let (name, canonical, _) = template::validate(json)?;
            (name, canonical)
        } else {
            let valid = envoy::validate(kind, json)?;
            (valid.name, valid.canonical)
        };
        let refs = references(kind, &document);
        Ok(Change::Put {
            kind,
            name,
            document,
            refs,
            expect,
        })
    }

    /// The resource it changes.
    pub fn key(&self) -> (ResourceKind, &str) {
        match self {
            Change::Put { kind, name, .. }
            | Change::Delete { kind, name, .. }
            | Change::Derive { kind, name, .. } => (*kind, name),
        }
    }
}

/// Commands on a configuration repository.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigCommand {
    /// Apply `changes` as one revision, or none of them.
    Commit {
        /// The author's explanation.
        message: Option<String>,
        /// What the commit does, for the history.
        operation: Operation,
        /// The changes, applied in order.
        changes: Vec<Change>,
    },
    /// Apply the result of merging a branch as one revision that records what it merged.
    Merge {
        /// The author's explanation.
        message: Option<String>,
        /// The branch and the revision of it that was merged.
        source: BranchPoint,
        /// The changes the merge makes to this branch.
        changes: Vec<Change>,
    },
    /// Start this (new) branch as a copy of `base`: its first commit creates every resource the
    /// base held at that revision.
    Fork {
        /// The author's explanation.
        message: Option<String>,
        /// Where the branch starts.
        base: BranchPoint,
        /// Every resource of the base at that revision, as creations.
        resources: Vec<Change>,
    },
    /// Close this branch. Its events stay; it takes no further commits.
    DeleteBranch,
}

impl ConfigCommand {
    /// The changes a commit or a merge makes to the branch; none for a fork (which copies its
    /// base) or a branch deletion.
    pub fn edits(&self) -> &[Change] {
        match self {
            ConfigCommand::Commit { changes, .. } | ConfigCommand::Merge { changes, .. } => changes,
            ConfigCommand::Fork { .. } | ConfigCommand::DeleteBranch => &[],
        }
    }
}

/// What happened in a configuration repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConfigEvent {
    /// A commit began: the header of the events that follow with the same revision.
    Committed {
        /// The new revision.
        revision: u64,
        /// The author's explanation.
        message: Option<String>,
        /// What the commit did.
        operation: Operation,
        /// For a merge: the branch and revision it brought in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        merged: Option<BranchPoint>,
    },
    /// This branch started from `base` (follows the `Committed` header of its first commit).
    Branched {
        /// The branch's first revision.
        revision: u64,
        /// Where it started.
        base: BranchPoint,
    },
    /// This branch was closed at its current revision.
    BranchDeleted {
        /// Its last revision.
        revision: u64,
    },
    /// A resource came into being.
    ResourceCreated {
        /// The revision.
        revision: u64,
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// Its canonical document.
        document: Value,
        /// The document's content hash.
        hash: String,
        /// What it refers to.
        refs: BTreeSet<ResourceRef>,
        /// The template declaration it was rendered from, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        derivation: Option<Derivation>,
    },
    /// A resource's document changed.
    ResourceReplaced {
        /// The revision.
        revision: u64,
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// Its new canonical document.
        document: Value,
        /// The document's content hash.
        hash: String,
        /// What it refers to now.
        refs: BTreeSet<ResourceRef>,
        /// The template declaration it was rendered from, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        derivation: Option<Derivation>,
    },
    /// A resource was removed.
    ResourceDeleted {
        /// The revision.
        revision: u64,
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
    },
}

impl DomainEvent for ConfigEvent {
    fn event_type(&self) -> String {
        match self {
            ConfigEvent::Committed { .. } => "Committed",
            ConfigEvent::ResourceCreated { .. } => "ResourceCreated",
            ConfigEvent::ResourceReplaced { .. } => "ResourceReplaced",
            ConfigEvent::ResourceDeleted { .. } => "ResourceDeleted",
            ConfigEvent::Branched { .. } => "Branched",
            ConfigEvent::BranchDeleted { .. } => "BranchDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a commit was refused; nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A create found the resource already there.
    #[error("{kind} `{name}` already exists")]
    AlreadyExists {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
    },
    /// The resource does not exist.
    #[error("there is no {kind} `{name}`")]
    NotFound {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
    },
    /// `If-Match` named another version than the current one.
    #[error("{kind} `{name}` is at version {actual}, not {expected}")]
    VersionMismatch {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// The version the request expected.
        expected: u64,
        /// The current version.
        actual: u64,
    },
    /// The same resource appears twice in one commit.
    #[error("{kind} `{name}` is changed twice in one commit")]
    ChangedTwice {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
    },
    /// After the commit, resources would refer to resources that do not exist.
    #[error("{}", describe_dangling(.0))]
    DanglingReferences(Vec<(ResourceRef, ResourceRef)>),
    /// Groups would form a cycle through their parents.
    #[error("groups would form a cycle: {}", .0.join(" → "))]
    GroupCycle(Vec<String>),
    /// The branch exists, or existed: a branch name stays with its history.
    #[error("the branch exists already (a deleted branch keeps its name with its history)")]
    BranchExists,
    /// The branch was deleted; it takes no commits.
    #[error("the branch was deleted")]
    BranchDeleted,
    /// A resource would be stored with secret material in clear (or sealed material outside a
    /// secret).
    #[error("{kind} `{name}`: {}", describe_violations(.violations))]
    SecretMaterial {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// Each sensitive value refused, and why.
        violations: Vec<Violation>,
    },
    /// A resource declared from a template does not render into a valid resource.
    #[error("{kind} `{name}` from template `{template}`: {}", describe_violations(.violations))]
    Render {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// The template.
        template: String,
        /// What is wrong, and where in the declaration or the rendered resource.
        violations: Vec<Violation>,
    },
    /// The branch cannot be deleted (`main`, or never created).
    #[error("this branch cannot be deleted")]
    NotDeletable,
    /// A deleted resource is still referred to.
    #[error("{kind} `{name}` is still used by {}", describe_refs(.by))]
    StillReferenced {
        /// Its kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// Who refers to it.
        by: Vec<ResourceRef>,
    },
}

fn describe_violations(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} (at `{}`)", v.message, v.pointer))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_refs(refs: &[ResourceRef]) -> String {
    refs.iter()
        .map(|r| format!("{} `{}`", r.kind, r.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_dangling(dangling: &[(ResourceRef, ResourceRef)]) -> String {
    dangling
        .iter()
        .map(|(from, to)| dangling_message(from, to))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What is wrong with the reference from `from` to `to`, which does not resolve.
pub fn dangling_message(from: &ResourceRef, to: &ResourceRef) -> String {
    match shared::split_qualified(&to.name) {
        Some((owner, _)) => format!(
            "{} `{}` refers to {} `{}`, which tenant `{owner}` does not share with this tenant",
            from.kind, from.name, to.kind, to.name
        ),
        None => format!(
            "{} `{}` refers to missing {} `{}`",
            from.kind, from.name, to.kind, to.name
        ),
    }
}

/// What the repository knows of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceState {
    /// The revision at which it last changed (its ETag).
    pub version: u64,
    /// The content hash of its document.
    pub hash: String,
    /// What it refers to.
    pub refs: BTreeSet<ResourceRef>,
    /// The template declaration it was rendered from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<Derivation>,
    /// For a template: its canonical document, which derived resources are rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Value>,
}

/// A configuration repository: its revision and what it holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRepo {
    revision: u64,
    /// Keyed by `kind/name` (a name never contains `/`).
    resources: BTreeMap<String, ResourceState>,
    /// Where this branch started; `None` for `main` (and a branch never created).
    #[serde(default)]
    base: Option<BranchPoint>,
    /// Whether this branch was deleted.
    #[serde(default)]
    deleted: bool,
}

fn key(kind: ResourceKind, name: &str) -> String {
    format!("{kind}/{name}")
}

fn split_key(key: &str) -> (ResourceKind, &str) {
    let (kind, name) = key.split_once('/').expect("keys are kind/name");
    let kind = ResourceKind::ALL
        .into_iter()
        .find(|k| k.to_string() == kind)
        .expect("a known kind");
    (kind, name)
}

/// The content hash of a canonical document: hex SHA-256 of its JSON text (keys sorted).
pub fn content_hash(document: &Value) -> String {
    let digest = Sha256::digest(document.to_string().as_bytes());
    digest
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            use fmt::Write as _;
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

impl ConfigRepo {
    /// The current revision (0 before the first commit).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The state of one resource, if it exists.
    pub fn resource(&self, kind: ResourceKind, name: &str) -> Option<&ResourceState> {
        self.resources.get(&key(kind, name))
    }

    /// Where this branch started (`None` for `main`).
    pub fn base(&self) -> Option<&BranchPoint> {
        self.base.as_ref()
    }

    /// Whether this branch was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// The first commit of a new branch: every resource of the base, created at the revision
    /// after the base's.
    fn fork(
        &self,
        context: &CommitContext,
        message: Option<String>,
        base: BranchPoint,
        resources: Vec<Change>,
    ) -> Result<Vec<ConfigEvent>, ConfigError> {
        if self.revision > 0 || self.deleted || self.base.is_some() {
            return Err(ConfigError::BranchExists);
        }
        let start = ConfigRepo {
            revision: base.revision,
            ..ConfigRepo::default()
        };
        let mut events =
            start.decide(context, message.clone(), Operation::Branch, None, resources)?;
        let revision = base.revision + 1;
        if events.is_empty() {
            events.push(ConfigEvent::Committed {
                revision,
                message,
                operation: Operation::Branch,
                merged: None,
            });
        }
        events.insert(1, ConfigEvent::Branched { revision, base });
        Ok(events)
    }

    fn decide(
        &self,
        context: &CommitContext,
        message: Option<String>,
        operation: Operation,
        merged: Option<BranchPoint>,
        changes: Vec<Change>,
    ) -> Result<Vec<ConfigEvent>, ConfigError> {
        if self.deleted {
            return Err(ConfigError::BranchDeleted);
        }
        let revision = self.revision + 1;
        // Templates first, so that resources declared from them in the same commit render from
        // their new version (the order of other changes does not matter: each key at most once).
        let mut changes = changes;
        changes.sort_by_key(|change| change.key().0 != ResourceKind::Template);
        let mut seen = BTreeSet::new();
        // The state after the commit, for the changed keys only.
        let mut overlay: BTreeMap<String, Option<ResourceState>> = BTreeMap::new();
        let mut events = Vec::new();
        for change in changes {
            let (kind, name) = change.key();
            let change_key = key(kind, name);
            if !seen.insert(change_key.clone()) {
                return Err(ConfigError::ChangedTwice {
                    kind,
                    name: name.to_owned(),
                });
            }
            let current = self.resources.get(&change_key);
            check_expectation(change_expect(&change), current, kind, name)?;
            let put = match change {
                Change::Put {
                    kind,
                    name,
                    document,
                    refs,
                    ..
                } => (kind, name, document, refs, None),
                Change::Derive {
                    kind,
                    name,
                    derivation,
                    ..
                } => {
                    let (document, refs) =
                        self.render(context, kind, &name, &derivation, &overlay)?;
                    (kind, name, document, refs, Some(derivation))
                }
                Change::Delete { kind, name, .. } => {
                    if current.is_none() {
                        continue;
                    }
                    overlay.insert(change_key, None);
                    events.push(ConfigEvent::ResourceDeleted {
                        revision,
                        kind,
                        name,
                    });
                    continue;
                }
            };
            check_material(put.0, &put.1, &put.2)?;
            if let Some(event) = put_event(revision, current, put, &mut overlay) {
                events.push(event);
            }
        }
        // Resources declared from a template that this commit changed are rendered again, in
        // this commit.
        let changed_templates: BTreeSet<&str> = overlay
            .iter()
            .filter(|(_, state)| state.as_ref().is_some_and(|s| s.template.is_some()))
            .map(|(k, _)| split_key(k).1)
            .collect();
        if !changed_templates.is_empty() {
            let derived: Vec<(String, Derivation)> = self
                .resources
                .iter()
                .filter(|(k, _)| !seen.contains(*k))
                .filter_map(|(k, state)| {
                    let derivation = state.derivation.as_ref()?;
                    changed_templates
                        .contains(derivation.template.as_str())
                        .then(|| (k.clone(), derivation.clone()))
                })
                .collect();
            for (derived_key, derivation) in derived {
                let (kind, name) = split_key(&derived_key);
                let (document, refs) = self.render(context, kind, name, &derivation, &overlay)?;
                let current = self.resources.get(&derived_key);
                check_material(kind, name, &document)?;
                let put = (kind, name.to_owned(), document, refs, Some(derivation));
                if let Some(event) = put_event(revision, current, put, &mut overlay) {
                    events.push(event);
                }
            }
        }
        if events.is_empty() {
            return Ok(events);
        }
        self.check_references(&context.shared, &overlay)?;
        events.insert(
            0,
            ConfigEvent::Committed {
                revision,
                message,
                operation,
                merged,
            },
        );
        Ok(events)
    }

    /// Renders `name` from its template as the commit leaves it, validates it, and returns its
    /// canonical document and references (the template's among them).
    fn render(
        &self,
        context: &CommitContext,
        kind: ResourceKind,
        name: &str,
        derivation: &Derivation,
        overlay: &BTreeMap<String, Option<ResourceState>>,
    ) -> Result<(Value, BTreeSet<ResourceRef>), ConfigError> {
        let refused = |violations: Vec<Violation>| ConfigError::Render {
            kind,
            name: name.to_owned(),
            template: derivation.template.clone(),
            violations,
        };
        let template_key = key(ResourceKind::Template, &derivation.template);
        let document = if shared::split_qualified(&derivation.template).is_some() {
            context.shared.template(&derivation.template)
        } else {
            match overlay.get(&template_key) {
                Some(state) => state.as_ref(),
                None => self.resources.get(&template_key),
            }
            .and_then(|s| s.template.as_ref())
        };
        let Some(document) = document else {
            let message = match shared::split_qualified(&derivation.template) {
                Some((owner, own_name)) => {
                    format!("tenant `{owner}` shares no template `{own_name}` with this tenant")
                }
                None => format!("there is no template `{}`", derivation.template),
            };
            return Err(refused(vec![Violation {
                pointer: "/template".to_owned(),
                message,
            }]));
        };
        let spec: template::TemplateSpec =
            serde_json::from_value(document.clone()).map_err(|error| {
                refused(vec![Violation {
                    pointer: "/template".to_owned(),
                    message: format!("the stored template does not decode: {error}"),
                }])
            })?;
        if spec.kind != kind {
            return Err(refused(vec![Violation {
                pointer: "/template".to_owned(),
                message: format!(
                    "template `{}` makes a {}, not a {kind}",
                    spec.name, spec.kind
                ),
            }]));
        }
        let max_bytes = context.limits.max_rendered_bytes;
        let rendered = template::render(&spec, name, derivation, max_bytes).map_err(refused)?;
        let valid = envoy::validate(kind, &rendered).map_err(refused)?;
        let mut refs = references(kind, &valid.canonical);
        refs.insert(ResourceRef {
            kind: ResourceKind::Template,
            name: derivation.template.clone(),
        });
        Ok((valid.canonical, refs))
    }

    /// No resource may refer to a missing one after the commit, and no deleted resource may still
    /// be referred to.
    fn check_references(
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
fn check_material(kind: ResourceKind, name: &str, document: &Value) -> Result<(), ConfigError> {
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

fn change_expect(change: &Change) -> Expect {
    match change {
        Change::Put { expect, .. }
        | Change::Delete { expect, .. }
        | Change::Derive { expect, .. } => *expect,
    }
}

/// A resource's new document (with its references and template declaration).
type Put = (
    ResourceKind,
    String,
    Value,
    BTreeSet<ResourceRef>,
    Option<Derivation>,
);

/// The event of putting a resource, recorded in `overlay`; `None` when nothing changes.
fn put_event(
    revision: u64,
    current: Option<&ResourceState>,
    (kind, name, document, refs, derivation): Put,
    overlay: &mut BTreeMap<String, Option<ResourceState>>,
) -> Option<ConfigEvent> {
    let hash = content_hash(&document);
    if current.is_some_and(|state| state.hash == hash && state.derivation == derivation) {
        return None;
    }
    overlay.insert(
        key(kind, &name),
        Some(ResourceState {
            version: revision,
            hash: hash.clone(),
            refs: refs.clone(),
            derivation: derivation.clone(),
            template: (kind == ResourceKind::Template).then(|| document.clone()),
        }),
    );
    Some(if current.is_some() {
        ConfigEvent::ResourceReplaced {
            revision,
            kind,
            name,
            document,
            hash,
            refs,
            derivation,
        }
    } else {
        ConfigEvent::ResourceCreated {
            revision,
            kind,
            name,
            document,
            hash,
            refs,
            derivation,
        }
    })
}

fn check_expectation(
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

impl Aggregate for ConfigRepo {
    const TYPE: &'static str = "config";
    type Command = ConfigCommand;
    type Event = ConfigEvent;
    type Error = ConfigError;
    type Services = CommitContext;

    async fn handle(
        &mut self,
        command: Self::Command,
        context: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            ConfigCommand::Commit {
                message,
                operation,
                changes,
            } => self.decide(context, message, operation, None, changes)?,
            ConfigCommand::Merge {
                message,
                source,
                changes,
            } => self.decide(context, message, Operation::Merge, Some(source), changes)?,
            ConfigCommand::Fork {
                message,
                base,
                resources,
            } => self.fork(context, message, base, resources)?,
            ConfigCommand::DeleteBranch => {
                if self.deleted {
                    return Err(ConfigError::BranchDeleted);
                }
                if self.base.is_none() {
                    return Err(ConfigError::NotDeletable);
                }
                vec![ConfigEvent::BranchDeleted {
                    revision: self.revision,
                }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ConfigEvent::Committed { revision, .. } => self.revision = revision,
            ConfigEvent::ResourceCreated {
                revision,
                kind,
                name,
                document,
                hash,
                refs,
                derivation,
            }
            | ConfigEvent::ResourceReplaced {
                revision,
                kind,
                name,
                document,
                hash,
                refs,
                derivation,
            } => {
                self.resources.insert(
                    key(kind, &name),
                    ResourceState {
                        version: revision,
                        hash,
                        refs,
                        derivation,
                        template: (kind == ResourceKind::Template).then_some(document),
                    },
                );
            }
            ConfigEvent::ResourceDeleted { kind, name, .. } => {
                self.resources.remove(&key(kind, &name));
            }
            ConfigEvent::Branched { base, .. } => self.base = Some(base),
            ConfigEvent::BranchDeleted { .. } => self.deleted = true,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Create => "create",
            Operation::Replace => "replace",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
            Operation::Rollback => "rollback",
            Operation::Bulk => "bulk",
            Operation::Branch => "branch",
            Operation::Merge => "merge",
        })
    }
}

#[cfg(test)]
mod tests;
