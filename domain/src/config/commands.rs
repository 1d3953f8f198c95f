//! The commands of a configuration repository: a commit (or a merge, or a branch's first
//! commit) and the changes it applies, each with what it expects of the resource's current state.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::branch::BranchPoint;
use super::group;
use super::refs::{references, ResourceRef};
use super::template::{self, Derivation};
use crate::envoy::{self, ResourceKind, Violation};

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
