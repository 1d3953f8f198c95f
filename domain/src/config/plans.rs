//! The changes that bring a branch to another state (FR-VC-004, FR-VC-005): a rollback to an
//! earlier revision, and the merge of a branch into its base. Pure: the states come in, the
//! changes (or the conflicts and faults that stop them) go out; committing them is the service's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::merge::merge_document;
use super::template::Derivation;
use super::{Change, Expect};
use crate::envoy::sensitive::redact;
use crate::envoy::{ResourceKind, Violation};

/// A resource's key in a state: its kind and name.
pub type Key = (ResourceKind, String);

/// A stored resource: its document and the revision that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// Its canonical document.
    pub document: Value,
    /// The revision that wrote this version.
    pub version: i64,
}

/// A branch's resources at one revision, and the template declarations of those declared from one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BranchState {
    /// The resources, by kind and name.
    pub resources: BTreeMap<Key, Versioned>,
    /// The declarations (a `Derivation` as JSON), by kind and name.
    pub declared: BTreeMap<Key, Value>,
}

/// A resource whose stored document or declaration no longer passes the checks: the fault of a
/// rollback or a merge, with the resource it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanFault {
    /// The resource's kind.
    pub kind: ResourceKind,
    /// Its name.
    pub name: String,
    /// What is wrong, each at its JSON pointer in the resource.
    pub violations: Vec<Violation>,
}

/// The change that restores a stored resource: its document, or its template declaration.
pub fn restore(
    kind: ResourceKind,
    document: &Value,
    declaration: Option<&Value>,
    expect: Expect,
) -> Result<Change, Vec<Violation>> {
    match declaration {
        None => Change::put(kind, document, expect),
        Some(declaration) => {
            let derivation: Derivation =
                serde_json::from_value(declaration.clone()).map_err(|error| {
                    vec![Violation {
                        pointer: String::new(),
                        message: format!("the stored template declaration does not read: {error}"),
                    }]
                })?;
            Ok(Change::Derive {
                kind,
                name: document
                    .get(kind.name_field())
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                derivation,
                expect,
            })
        }
    }
}

/// The changes that turn `current` into `target`: every resource that differs (in document or
/// declaration) restored, every resource `target` lacks deleted.
pub fn rollback(target: &BranchState, current: &BranchState) -> Result<Vec<Change>, PlanFault> {
    let mut changes = Vec::new();
    for (key, resource) in &target.resources {
        let same_document =
            current.resources.get(key).map(|r| &r.document) == Some(&resource.document);
        if !same_document || target.declared.get(key) != current.declared.get(key) {
            let (kind, name) = key;
            let change = restore(
                *kind,
                &resource.document,
                target.declared.get(key),
                Expect::Anything,
            )
            .map_err(|violations| PlanFault {
                kind: *kind,
                name: name.clone(),
                violations,
            })?;
            changes.push(change);
        }
    }
    for (kind, name) in current.resources.keys() {
        if !target.resources.contains_key(&(*kind, name.clone())) {
            changes.push(Change::Delete {
                kind: *kind,
                name: name.clone(),
                expect: Expect::Anything,
            });
        }
    }
    Ok(changes)
}

/// The three states a merge of a branch into its base compares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeInputs {
    /// The branch when the two last agreed (the fork, or the last merge).
    pub ancestor: BranchState,
    /// The base now.
    pub ours: BranchState,
    /// The branch now.
    pub theirs: BranchState,
}

/// What a merge does to a resource of the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// It is created.
    Created,
    /// It is replaced.
    Replaced,
    /// It is deleted.
    Deleted,
}

impl Merged {
    /// Its name in answers: `created`, `replaced` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Merged::Created => "created",
            Merged::Replaced => "replaced",
            Merged::Deleted => "deleted",
        }
    }
}

/// A value both sides of a merge changed differently (sensitive values redacted).
#[derive(Debug, Clone, PartialEq)]
pub struct MergeConflict {
    /// The resource's kind.
    pub kind: ResourceKind,
    /// Its name.
    pub name: String,
    /// Where in the resource (RFC 6901; empty: the whole resource).
    pub pointer: String,
    /// The value when the two last agreed (`None`: absent).
    pub base: Option<Value>,
    /// The value on the base.
    pub ours: Option<Value>,
    /// The value on the branch.
    pub theirs: Option<Value>,
}

/// What a merge would do: the changes to the base, each changed resource for the answer, and the
/// conflicts (the merge must not land if there is any).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergePlan {
    /// The changes to the base.
    pub changes: Vec<Change>,
    /// Each changed resource.
    pub report: Vec<(Key, Merged)>,
    /// The values both sides changed differently.
    pub conflicts: Vec<MergeConflict>,
}

/// Merges every resource of `inputs` three ways (ADR 0007). Each change expects the base's
/// resource as the merge read it, so a concurrent write to the base fails the commit instead of
/// being overwritten. A resource only the branch changed, and that it declares from a template,
/// comes with its declaration (rendered on the base); otherwise the merged document.
pub fn merge(inputs: &MergeInputs) -> Result<MergePlan, PlanFault> {
    let (ancestor, ours, theirs) = (&inputs.ancestor, &inputs.ours, &inputs.theirs);
    let keys: BTreeSet<&Key> = ancestor
        .resources
        .keys()
        .chain(ours.resources.keys())
        .chain(theirs.resources.keys())
        .collect();
    let mut plan = MergePlan::default();
    for key in keys {
        let (kind, name) = (key.0, &key.1);
        let (base_row, ours_row, theirs_row) = (
            ancestor.resources.get(key),
            ours.resources.get(key),
            theirs.resources.get(key),
        );
        let merged = match merge_document(
            base_row.map(|row| &row.document),
            ours_row.map(|row| &row.document),
            theirs_row.map(|row| &row.document),
        ) {
            Ok(merged) => merged,
            Err(found) => {
                plan.conflicts
                    .extend(found.into_iter().map(|c| MergeConflict {
                        kind,
                        name: name.clone(),
                        pointer: c.pointer,
                        base: c.base.map(|v| redact(kind, v)),
                        ours: c.ours.map(|v| redact(kind, v)),
                        theirs: c.theirs.map(|v| redact(kind, v)),
                    }));
                continue;
            }
        };
        let expect = match ours_row {
            Some(row) => Expect::Version(u64::try_from(row.version).unwrap_or_default()),
            None => Expect::Absent,
        };
        match (merged, ours_row) {
            (Some(document), Some(row)) if document == row.document => {}
            (Some(document), _) => {
                let untouched_on_base = ours_row.map(|r| &r.document)
                    == base_row.map(|r| &r.document)
                    && ours.declared.get(key) == ancestor.declared.get(key);
                let declared = theirs.declared.get(key).filter(|_| {
                    untouched_on_base && theirs_row.map(|r| &r.document) == Some(&document)
                });
                let change = match declared {
                    Some(declaration) => restore(kind, &document, Some(declaration), expect),
                    None => Change::put(kind, &document, expect),
                }
                .map_err(|violations| PlanFault {
                    kind,
                    name: name.clone(),
                    violations,
                })?;
                plan.changes.push(change);
                let merged = if ours_row.is_some() {
                    Merged::Replaced
                } else {
                    Merged::Created
                };
                plan.report.push((key.clone(), merged));
            }
            (None, Some(_)) => {
                plan.changes.push(Change::Delete {
                    kind,
                    name: name.clone(),
                    expect,
                });
                plan.report.push((key.clone(), Merged::Deleted));
            }
            (None, None) => {}
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cluster(name: &str, port: u16) -> Value {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint":
                {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
        })
    }

    fn state(resources: &[(&str, u16, i64)]) -> BranchState {
        BranchState {
            resources: resources
                .iter()
                .map(|(name, port, version)| {
                    let document = Change::put(
                        ResourceKind::Cluster,
                        &cluster(name, *port),
                        Expect::Anything,
                    )
                    .map(|change| match change {
                        Change::Put { document, .. } => document,
                        _ => unreachable!(),
                    })
                    .unwrap();
                    let key = (ResourceKind::Cluster, (*name).to_owned());
                    (
                        key,
                        Versioned {
                            document,
                            version: *version,
                        },
                    )
                })
                .collect(),
            declared: BTreeMap::new(),
        }
    }

    #[test]
    fn a_rollback_restores_what_changed_deletes_what_came_later_and_leaves_the_rest() {
        let target = state(&[("a", 1, 1), ("b", 2, 1)]);
        let current = state(&[("a", 1, 1), ("b", 3, 2), ("c", 4, 3)]);
        let changes = rollback(&target, &current).unwrap();
        let keys: Vec<_> = changes.iter().map(Change::key).collect();
        assert_eq!(
            keys,
            vec![(ResourceKind::Cluster, "b"), (ResourceKind::Cluster, "c")]
        );
        assert!(matches!(changes[1], Change::Delete { .. }));
    }

    #[test]
    fn a_merge_takes_the_branchs_change_expecting_the_bases_version_and_reports_conflicts() {
        let ancestor = state(&[("a", 1, 1), ("b", 1, 1)]);
        let ours = state(&[("a", 1, 1), ("b", 2, 5)]);
        let theirs = state(&[("a", 7, 3), ("b", 3, 4)]);
        let inputs = MergeInputs {
            ancestor,
            ours,
            theirs,
        };
        let plan = merge(&inputs).unwrap();
        assert_eq!(plan.changes.len(), 1);
        assert!(matches!(
            &plan.changes[0],
            Change::Put {
                expect: Expect::Version(1),
                ..
            }
        ));
        assert_eq!(
            plan.report,
            vec![((ResourceKind::Cluster, "a".to_owned()), Merged::Replaced)]
        );
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].name, "b");
    }
}
