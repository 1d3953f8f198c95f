//! Bulk operations (API-BK-001, API-BK-002): what one operation of a bulk request asks for, and
//! the changes it expands to. A patch of a group's resources (FR-CL-003) expands to one change per
//! resource the group gets; the caller reads those resources and hands them here.
//!
//! What is wrong with an operation is a [`Fault`] with a pointer within the operation, so a
//! request with many faults is answered with all of them at once.

use serde::Deserialize;
use serde_json::Value;

use super::limits::{self, Limits, PatchRefusal};
use super::writes::{self, Patch};
use super::{Change, Expect};
use crate::envoy::{ResourceKind, Violation};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkOp {
    /// Create `resource` (it must not exist).
    Create,
    /// Replace the resource named in `resource` (it must exist).
    Replace,
    /// Apply `patch` or `merge_patch` to `name`, or to every resource of the kind `group` gets.
    Patch,
    /// Delete `name`.
    Delete,
}

/// One operation of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkOperation {
    /// What it does.
    pub op: BulkOp,
    /// The collection it is about (`clusters`, `groups`…), as the request names it.
    pub kind: String,
    /// The resource's name (patch and delete).
    pub name: Option<String>,
    /// Patch every resource of `kind` this group gets (instead of `name`).
    pub group: Option<String>,
    /// The resource (create and replace).
    pub resource: Option<Value>,
    /// An RFC 6902 JSON Patch (patch).
    pub patch: Option<Value>,
    /// An RFC 7396 merge patch (patch).
    pub merge_patch: Option<Value>,
    /// The version the resource must be at (replace, patch, delete).
    pub if_match: Option<u64>,
}

/// What is wrong with an operation, at `pointer` within it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// A JSON pointer within the operation (`""`: the operation as a whole).
    pub pointer: String,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with (part of) an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Said in words.
    Said(String),
    /// A document given is larger than a stored document may be.
    DocumentTooLarge {
        /// The limit, in bytes of compact JSON.
        limit: usize,
    },
    /// A patch was refused on `kind` `name`.
    Patch {
        /// The resource's kind.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// Why.
        refusal: PatchRefusal,
    },
}

impl Fault {
    fn said(pointer: &str, detail: impl Into<String>) -> Vec<Fault> {
        vec![Fault {
            pointer: pointer.to_owned(),
            problem: Problem::Said(detail.into()),
        }]
    }

    /// Schema violations of a document given at `at`.
    fn violations(at: &str, violations: Vec<Violation>) -> Vec<Fault> {
        violations
            .into_iter()
            .map(|violation| Fault {
                pointer: format!("{at}{}", violation.pointer),
                problem: Problem::Said(violation.message),
            })
            .collect()
    }
}

/// Which resources a patch operation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The one resource of this name.
    Name(&'a str),
    /// Every resource of the kind this group gets, its own and its ancestors'.
    Group(&'a str),
}

/// What an operation expands to before anything is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Expansion<'a> {
    /// These changes.
    Changes(Vec<Change>),
    /// A patch of `kind` resources: [`patched`] on each target as it is stored.
    Patch {
        /// The kind patched.
        kind: ResourceKind,
        /// Which of them.
        target: Target<'a>,
    },
}

/// A stored resource, as a patch starts from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Its document.
    pub document: Value,
    /// Its version.
    pub version: u64,
    /// The template it is declared from, if it is (then its declaration is what changes, not it).
    pub template: Option<String>,
}

/// What `operation` asks for, as far as can be told without reading anything, its documents held
/// to `limits`.
pub fn expand<'a>(
    operation: &'a BulkOperation,
    limits: &Limits,
) -> Result<Expansion<'a>, Vec<Fault>> {
    let kind = ResourceKind::from_collection(&operation.kind).ok_or_else(|| {
        Fault::said(
            "/kind",
            format!(
                "`{}` is not a collection: clusters, endpoints, listeners, routes, secrets, groups or templates",
                operation.kind
            ),
        )
    })?;
    let present = operation.if_match.map_or(Expect::Present, Expect::Version);
    match (
        operation.op,
        operation.name.as_deref(),
        operation.group.as_deref(),
    ) {
        (BulkOp::Patch, None, Some(group)) => Ok(Expansion::Patch {
            kind,
            target: Target::Group(group),
        }),
        (_, _, Some(_)) => Err(Fault::said(
            "/group",
            "`group` goes with a patch, instead of `name`",
        )),
        (BulkOp::Create | BulkOp::Replace, _, None) => {
            let resource = operation
                .resource
                .as_ref()
                .ok_or_else(|| Fault::said("/resource", "a create or replace needs `resource`"))?;
            let expect = if operation.op == BulkOp::Create {
                Expect::Absent
            } else {
                present
            };
            if limits::check_document(resource, limits).is_err() {
                return Err(vec![Fault {
                    pointer: "/resource".to_owned(),
                    problem: Problem::DocumentTooLarge {
                        limit: limits.max_document_bytes,
                    },
                }]);
            }
            let change = writes::change_of(kind, resource, expect, None)
                .map_err(|violations| Fault::violations("/resource", violations))?;
            Ok(Expansion::Changes(vec![change]))
        }
        (BulkOp::Delete, name, None) => {
            let name = name.ok_or_else(|| Fault::said("/name", "a delete needs `name`"))?;
            Ok(Expansion::Changes(vec![Change::Delete {
                kind,
                name: name.to_owned(),
                expect: present,
            }]))
        }
        (BulkOp::Patch, name, None) => {
            let name =
                name.ok_or_else(|| Fault::said("/name", "a patch needs `name` or `group`"))?;
            Ok(Expansion::Patch {
                kind,
                target: Target::Name(name),
            })
        }
    }
}

/// The operation's patch applied to `kind` `name` as `stored` (`None`: there is none), within
/// `limits`; the change expects the resource at the operation's `if_match`, else at the version
/// patched, so a concurrent write in between refuses the commit.
pub fn patched(
    (kind, name): (ResourceKind, &str),
    stored: Option<Stored>,
    operation: &BulkOperation,
    limits: &Limits,
) -> Result<Change, Vec<Fault>> {
    let stored =
        stored.ok_or_else(|| Fault::said("/name", format!("there is no {kind} `{name}`")))?;
    if stored.template.is_some() {
        return Err(Fault::said(
            "/name",
            format!("{kind} `{name}` is declared from a template: replace its declaration instead"),
        ));
    }
    let (patch, at) = match (&operation.patch, &operation.merge_patch) {
        (Some(patch), None) => {
            let patch: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(|error| {
                    Fault::said("/patch", format!("not an RFC 6902 patch: {error}"))
                })?;
            (Patch::Json(patch), "/patch")
        }
        (None, Some(merge)) => (Patch::Merge(merge.clone()), "/merge_patch"),
        _ => {
            return Err(Fault::said(
                "",
                "a patch needs exactly one of `patch` and `merge_patch`",
            ))
        }
    };
    let mut document = stored.document;
    patch.apply(&mut document, limits).map_err(|refusal| {
        vec![Fault {
            pointer: writes::refusal_pointer(&refusal, at),
            problem: Problem::Patch {
                kind,
                name: name.to_owned(),
                refusal,
            },
        }]
    })?;
    let expect = Expect::Version(operation.if_match.unwrap_or(stored.version));
    let change = writes::change_of(kind, &document, expect, None)
        .map_err(|violations| Fault::violations("/patch", violations))?;
    if change.key().1 != name {
        return Err(Fault::said("/patch", "a patch may not rename the resource"));
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn operation(op: BulkOp, kind: &str) -> BulkOperation {
        BulkOperation {
            op,
            kind: kind.to_owned(),
            name: None,
            group: None,
            resource: None,
            patch: None,
            merge_patch: None,
            if_match: None,
        }
    }

    fn group(name: &str) -> Value {
        json!({ "name": name })
    }

    #[test]
    fn an_unknown_collection_is_a_fault_at_kind() {
        let faults = expand(&operation(BulkOp::Delete, "widgets"), &Limits::default()).unwrap_err();
        assert_eq!(faults[0].pointer, "/kind");
    }

    #[test]
    fn a_group_goes_only_with_a_patch() {
        let mut delete = operation(BulkOp::Delete, "clusters");
        delete.group = Some("edge".to_owned());
        assert_eq!(
            expand(&delete, &Limits::default()).unwrap_err()[0].pointer,
            "/group"
        );
        let mut patch = operation(BulkOp::Patch, "clusters");
        patch.group = Some("edge".to_owned());
        assert_eq!(
            expand(&patch, &Limits::default()).unwrap(),
            Expansion::Patch {
                kind: ResourceKind::Cluster,
                target: Target::Group("edge")
            }
        );
    }

    #[test]
    fn a_create_larger_than_a_document_may_be_is_refused_before_validation() {
        let mut create = operation(BulkOp::Create, "groups");
        create.resource = Some(group("edge"));
        let limits = Limits {
            max_document_bytes: 4,
            ..Limits::default()
        };
        let faults = expand(&create, &limits).unwrap_err();
        assert_eq!(faults[0].problem, Problem::DocumentTooLarge { limit: 4 });
        assert!(matches!(
            expand(&create, &Limits::default()).unwrap(),
            Expansion::Changes(changes) if changes.len() == 1
        ));
    }

    #[test]
    fn a_patch_expects_the_version_it_patched_unless_told_otherwise() {
        let mut patch = operation(BulkOp::Patch, "groups");
        patch.merge_patch = Some(json!({ "description": "edge proxies" }));
        let stored = Stored {
            document: group("edge"),
            version: 7,
            template: None,
        };
        let change = patched(
            (ResourceKind::Group, "edge"),
            Some(stored.clone()),
            &patch,
            &Limits::default(),
        );
        assert!(matches!(
            change,
            Ok(Change::Put {
                expect: Expect::Version(7),
                ..
            })
        ));
        patch.if_match = Some(3);
        let change = patched(
            (ResourceKind::Group, "edge"),
            Some(stored),
            &patch,
            &Limits::default(),
        );
        assert!(matches!(
            change,
            Ok(Change::Put {
                expect: Expect::Version(3),
                ..
            })
        ));
    }

    #[test]
    fn a_patch_may_not_rename_nor_touch_a_declared_or_missing_resource() {
        let mut patch = operation(BulkOp::Patch, "groups");
        patch.merge_patch = Some(json!({ "name": "other" }));
        let stored = |template: Option<&str>| Stored {
            document: group("edge"),
            version: 1,
            template: template.map(str::to_owned),
        };
        let at = |result: Result<Change, Vec<Fault>>| result.unwrap_err()[0].pointer.clone();
        let limits = Limits::default();
        let key = (ResourceKind::Group, "edge");
        assert_eq!(
            at(patched(key, Some(stored(None)), &patch, &limits)),
            "/patch"
        );
        assert_eq!(
            at(patched(key, Some(stored(Some("t"))), &patch, &limits)),
            "/name"
        );
        assert_eq!(at(patched(key, None, &patch, &limits)), "/name");
    }

    #[test]
    fn a_patch_needs_exactly_one_kind_of_patch() {
        let patch = operation(BulkOp::Patch, "groups");
        let stored = Stored {
            document: group("edge"),
            version: 1,
            template: None,
        };
        let faults = patched(
            (ResourceKind::Group, "edge"),
            Some(stored),
            &patch,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(faults[0].pointer, "");
    }
}
