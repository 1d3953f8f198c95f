//! The configuration repository aggregate: what it keeps of each resource, how a command becomes
//! events (a commit, a merge, a branch's first commit, a branch's end) and how events rebuild it.
//! The rules a commit must keep are in `checks.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::branch::BranchPoint;
use super::checks::{check_expectation, check_material};
use super::commands::{Change, ConfigCommand, Expect, Operation};
use super::errors::ConfigError;
use super::events::ConfigEvent;
use super::index::Index;
use super::limits::CommitContext;
use super::refs::{references, ResourceRef};
use super::shared;
use super::template::{self, Derivation};
use crate::envoy::{self, ResourceKind, Violation};

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
#[serde(from = "StoredRepo")]
pub struct ConfigRepo {
    revision: u64,
    /// Keyed by `kind/name` (a name never contains `/`).
    pub(super) resources: BTreeMap<String, ResourceState>,
    /// Where this branch started; `None` for `main` (and a branch never created).
    #[serde(default)]
    base: Option<BranchPoint>,
    /// Whether this branch was deleted.
    #[serde(default)]
    deleted: bool,
    /// Who refers to what, and what is declared from which template (derived from `resources`).
    #[serde(skip)]
    pub(super) index: Index,
}

/// A [`ConfigRepo`] as a snapshot stores it: without its index, which loading rebuilds.
#[derive(Deserialize)]
struct StoredRepo {
    revision: u64,
    resources: BTreeMap<String, ResourceState>,
    #[serde(default)]
    base: Option<BranchPoint>,
    #[serde(default)]
    deleted: bool,
}

impl From<StoredRepo> for ConfigRepo {
    fn from(stored: StoredRepo) -> Self {
        Self {
            index: Index::of(&stored.resources),
            revision: stored.revision,
            resources: stored.resources,
            base: stored.base,
            deleted: stored.deleted,
        }
    }
}

/// The key of a resource in [`ConfigRepo`]: `kind/name`.
pub(super) fn key(kind: ResourceKind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// The kind and name a key of [`ConfigRepo`] names.
pub(super) fn split_key(key: &str) -> (ResourceKind, &str) {
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

    /// How many resources of `kind` the repository holds.
    pub fn count(&self, kind: ResourceKind) -> usize {
        self.index.count(kind)
    }

    /// Where this branch started (`None` for `main`).
    pub fn base(&self) -> Option<&BranchPoint> {
        self.base.as_ref()
    }

    /// Whether this branch was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// The events `command` causes on this state, or why it is refused; the state is not touched
    /// (applying the events is the caller's business, once they are stored).
    pub fn decide_command(
        &self,
        command: ConfigCommand,
        context: &CommitContext,
    ) -> Result<Vec<ConfigEvent>, ConfigError> {
        match command {
            ConfigCommand::Commit {
                message,
                operation,
                changes,
            } => self.decide(context, message, operation, None, changes),
            ConfigCommand::Merge {
                message,
                source,
                changes,
            } => self.decide(context, message, Operation::Merge, Some(source), changes),
            ConfigCommand::Fork {
                message,
                base,
                resources,
            } => self.fork(context, message, base, resources),
            ConfigCommand::DeleteBranch => {
                if self.deleted {
                    return Err(ConfigError::BranchDeleted);
                }
                if self.base.is_none() {
                    return Err(ConfigError::NotDeletable);
                }
                Ok(vec![ConfigEvent::BranchDeleted {
                    revision: self.revision,
                }])
            }
        }
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
        self.render_derived(context, revision, &seen, &mut overlay, &mut events)?;
        if events.is_empty() {
            return Ok(events);
        }
        if let Some(limit) = context.resources_per_kind {
            self.check_quota(limit, &overlay)?;
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

    /// Renders again the resources declared from a template that `overlay` changes (those the
    /// commit does not change itself, `seen`), found through the index of derivations.
    fn render_derived(
        &self,
        context: &CommitContext,
        revision: u64,
        seen: &BTreeSet<String>,
        overlay: &mut BTreeMap<String, Option<ResourceState>>,
        events: &mut Vec<ConfigEvent>,
    ) -> Result<(), ConfigError> {
        let changed_templates: BTreeSet<&str> = overlay
            .iter()
            .filter(|(_, state)| state.as_ref().is_some_and(|s| s.template.is_some()))
            .map(|(k, _)| split_key(k).1)
            .collect();
        let derived_keys: BTreeSet<&String> = changed_templates
            .iter()
            .flat_map(|template| self.index.derived_from(template))
            .filter(|k| !seen.contains(*k))
            .collect();
        let derived: Vec<(String, Derivation)> = derived_keys
            .into_iter()
            .filter_map(|k| {
                let derivation = self.resources.get(k)?.derivation.clone()?;
                Some((k.clone(), derivation))
            })
            .collect();
        for (derived_key, derivation) in derived {
            let (kind, name) = split_key(&derived_key);
            let (document, refs) = self.render(context, kind, name, &derivation, overlay)?;
            let current = self.resources.get(&derived_key);
            check_material(kind, name, &document)?;
            let put = (kind, name.to_owned(), document, refs, Some(derivation));
            if let Some(event) = put_event(revision, current, put, overlay) {
                events.push(event);
            }
        }
        Ok(())
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
        for event in self.decide_command(command, context)? {
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
                let resource_key = key(kind, &name);
                let state = ResourceState {
                    version: revision,
                    hash,
                    refs,
                    derivation,
                    template: (kind == ResourceKind::Template).then_some(document),
                };
                if let Some(old) = self.resources.insert(resource_key.clone(), state) {
                    self.index.remove(&resource_key, &old);
                }
                self.index
                    .add(&resource_key, &self.resources[&resource_key]);
            }
            ConfigEvent::ResourceDeleted { kind, name, .. } => {
                let resource_key = key(kind, &name);
                if let Some(old) = self.resources.remove(&resource_key) {
                    self.index.remove(&resource_key, &old);
                }
            }
            ConfigEvent::Branched { base, .. } => self.base = Some(base),
            ConfigEvent::BranchDeleted { .. } => self.deleted = true,
        }
    }
}
