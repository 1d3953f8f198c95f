//! Why a configuration repository refuses a commit, and how each refusal reads.

use super::refs::ResourceRef;
use super::shared;
use crate::envoy::{ResourceKind, Violation};

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
    /// The commit would leave more resources of a kind than the tenant's `resources_per_kind`
    /// quota allows.
    #[error("quota `resources_per_kind` ({limit}): this would make {after} {kind} resources")]
    QuotaExceeded {
        /// The kind that would grow past the quota.
        kind: ResourceKind,
        /// The quota.
        limit: u32,
        /// How many there would be after the commit.
        after: usize,
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
