//! The events of a configuration repository: a `Committed` header, then one event per changed
//! resource (or the branch's start or end), all under the commit's revision.

use std::collections::BTreeSet;

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::branch::BranchPoint;
use super::commands::Operation;
use super::refs::ResourceRef;
use super::template::Derivation;
use crate::envoy::ResourceKind;

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
