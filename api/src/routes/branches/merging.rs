//! Merge planning (ADR 0007): the three states a merge of a branch compares, and the three-way
//! merge of every resource into the changes to its base, or the conflicts that stop it.

use std::collections::{BTreeMap, BTreeSet};

use efms_domain::config::merge::merge_document;
use efms_domain::config::{Change, Expect};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, BranchRow, ResourceRow};
use serde_json::Value;

use super::responses::{MergeConflict, MergedChange};
use crate::access::TenantAccess;
use crate::error::{ApiError, FieldError};
use crate::routes::resources::{invalid, redact, restore};
use crate::state::AppState;

/// The three states a merge of `branch` compares, each by kind and name.
pub(super) struct MergeInputs {
    /// The branch's revision both sides last agreed on (the fork, or the last merge).
    pub(super) ancestor_revision: i64,
    pub(super) ancestor: BTreeMap<(ResourceKind, String), ResourceRow>,
    /// The base branch now.
    pub(super) ours: BTreeMap<(ResourceKind, String), ResourceRow>,
    /// The branch now, and its revision.
    pub(super) theirs: BTreeMap<(ResourceKind, String), ResourceRow>,
    pub(super) theirs_revision: i64,
    /// The template declarations of the resources declared from one, on the branch now and when
    /// the two last agreed.
    pub(super) theirs_declared: BTreeMap<(ResourceKind, String), Value>,
    pub(super) ancestor_declared: BTreeMap<(ResourceKind, String), Value>,
    pub(super) ours_declared: BTreeMap<(ResourceKind, String), Value>,
}

/// Reads the three states a merge of `branch` compares.
pub(super) async fn merge_inputs(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &BranchRow,
) -> Result<MergeInputs, ApiError> {
    let tenant_id = tenant.tenant_id;
    let ancestor_revision =
        read::last_merged_revision(&state.pool, tenant_id, &branch.base_branch, &branch.name)
            .await?
            .unwrap_or(branch.fork_revision);
    let ours_head = read::head_revision(&state.pool, tenant_id, &branch.base_branch).await?;
    let by_key = |rows: Vec<ResourceRow>| {
        rows.into_iter()
            .map(|row| ((row.kind, row.name.clone()), row))
            .collect::<BTreeMap<_, _>>()
    };
    Ok(MergeInputs {
        ancestor_revision,
        ancestor: by_key(
            read::resources_at(&state.pool, tenant_id, &branch.name, ancestor_revision).await?,
        ),
        ours: by_key(
            read::resources_at(&state.pool, tenant_id, &branch.base_branch, ours_head).await?,
        ),
        theirs: by_key(
            read::resources_at(&state.pool, tenant_id, &branch.name, branch.head).await?,
        ),
        theirs_revision: branch.head,
        theirs_declared: read::derivations_at(&state.pool, tenant_id, &branch.name, branch.head)
            .await?,
        ancestor_declared: read::derivations_at(
            &state.pool,
            tenant_id,
            &branch.name,
            ancestor_revision,
        )
        .await?,
        ours_declared: read::derivations_at(&state.pool, tenant_id, &branch.base_branch, ours_head)
            .await?,
    })
}

/// What a merge would do.
pub(super) struct MergePlan {
    /// The changes to the base.
    pub(super) changes: Vec<Change>,
    /// Each changed resource, for the answer.
    pub(super) report: Vec<MergedChange>,
    /// The values both sides changed differently (the merge must not land if any).
    pub(super) conflicts: Vec<MergeConflict>,
}

/// Merges every resource of `inputs`.
pub(super) fn plan_merge(inputs: &MergeInputs) -> Result<MergePlan, ApiError> {
    let keys: BTreeSet<&(ResourceKind, String)> = inputs
        .ancestor
        .keys()
        .chain(inputs.ours.keys())
        .chain(inputs.theirs.keys())
        .collect();
    let mut conflicts = Vec::new();
    let mut changes = Vec::new();
    let mut report = Vec::new();
    for key in keys {
        let (ancestor, ours, theirs) = (
            inputs.ancestor.get(key),
            inputs.ours.get(key),
            inputs.theirs.get(key),
        );
        let merged = match merge_document(
            ancestor.map(|row| &row.document),
            ours.map(|row| &row.document),
            theirs.map(|row| &row.document),
        ) {
            Ok(merged) => merged,
            Err(found) => {
                let kind = key.0;
                conflicts.extend(found.into_iter().map(|c| MergeConflict {
                    kind,
                    name: key.1.clone(),
                    pointer: c.pointer,
                    base: c.base.map(|v| redact(kind, v)),
                    ours: c.ours.map(|v| redact(kind, v)),
                    theirs: c.theirs.map(|v| redact(kind, v)),
                }));
                continue;
            }
        };
        let kind = key.0;
        // Each change expects the base's resource as the merge read it: a concurrent write to the
        // base fails the commit instead of being overwritten.
        let expect = match ours {
            Some(row) => Expect::Version(u64::try_from(row.version).map_err(ApiError::internal)?),
            None => Expect::Absent,
        };
        match (merged, ours) {
            (Some(document), Some(row)) if document == row.document => {}
            (Some(document), _) => {
                // Only the branch changed a resource it declares from a template: the
                // declaration comes along (rendered on the base); otherwise the merged document.
                let untouched_here = ours.map(|r| &r.document) == ancestor.map(|r| &r.document)
                    && inputs.ours_declared.get(key) == inputs.ancestor_declared.get(key);
                let declared = inputs
                    .theirs_declared
                    .get(key)
                    .filter(|_| untouched_here && theirs.map(|r| &r.document) == Some(&document));
                changes.push(match declared {
                    Some(declaration) => restore(kind, &document, Some(declaration), expect)?,
                    None => Change::put(kind, &document, expect)
                        .map_err(|violations| at_resource(kind, &key.1, invalid(violations)))?,
                });
                report.push(MergedChange {
                    kind,
                    name: key.1.clone(),
                    change: if ours.is_some() {
                        "replaced"
                    } else {
                        "created"
                    }
                    .to_owned(),
                });
            }
            (None, Some(_)) => {
                changes.push(Change::Delete {
                    kind,
                    name: key.1.clone(),
                    expect,
                });
                report.push(MergedChange {
                    kind,
                    name: key.1.clone(),
                    change: "deleted".to_owned(),
                });
            }
            (None, None) => {}
        }
    }
    Ok(MergePlan {
        changes,
        report,
        conflicts,
    })
}

/// Prefixes the pointers of a 422 about a merged resource with the resource it is about.
fn at_resource(kind: ResourceKind, name: &str, error: ApiError) -> ApiError {
    match error {
        ApiError::Validation(errors) => ApiError::Validation(
            errors
                .into_iter()
                .map(|e| {
                    FieldError::at(
                        e.pointer.unwrap_or_default(),
                        format!("merged {kind} `{name}`: {}", e.detail),
                    )
                })
                .collect(),
        ),
        other => other,
    }
}
