//! What a merge of a branch compares (ADR 0007): the three states, read from the read models. The
//! merge itself is planned by the domain and committed by the configuration service.

use std::collections::BTreeMap;

use efms_domain::config::plans::{BranchState, MergeInputs, Versioned};
use efms_projections::config::{self as read, BranchRow};

use crate::access::TenantAccess;
use crate::error::ApiError;
use crate::problem::MergeConflict;
use crate::state::AppState;

/// The three states a merge of a branch compares, and the revisions they are read at.
pub(super) struct MergeRead {
    /// The branch's revision both sides last agreed on (the fork, or the last merge).
    pub(super) ancestor_revision: i64,
    /// The branch's revision merged (its head).
    pub(super) theirs_revision: i64,
    /// The states.
    pub(super) inputs: MergeInputs,
}

/// Reads the three states a merge of `branch` compares.
pub(super) async fn merge_inputs(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &BranchRow,
) -> Result<MergeRead, ApiError> {
    let tenant_id = tenant.tenant_id;
    let ancestor_revision =
        read::last_merged_revision(&state.pool, tenant_id, &branch.base_branch, &branch.name)
            .await?
            .unwrap_or(branch.fork_revision);
    let ours_head = read::head_revision(&state.pool, tenant_id, &branch.base_branch).await?;
    Ok(MergeRead {
        ancestor_revision,
        theirs_revision: branch.head,
        inputs: MergeInputs {
            ancestor: branch_state(state, tenant, &branch.name, ancestor_revision).await?,
            ours: branch_state(state, tenant, &branch.base_branch, ours_head).await?,
            theirs: branch_state(state, tenant, &branch.name, branch.head).await?,
        },
    })
}

/// A branch's resources and declarations at `revision`.
pub async fn branch_state(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &str,
    revision: i64,
) -> Result<BranchState, ApiError> {
    let resources = read::resources_at(&state.pool, tenant.tenant_id, branch, revision)
        .await?
        .into_iter()
        .map(|row| {
            let resource = Versioned {
                document: row.document,
                version: row.version,
            };
            ((row.kind, row.name), resource)
        })
        .collect::<BTreeMap<_, _>>();
    let declared = read::derivations_at(&state.pool, tenant.tenant_id, branch, revision).await?;
    Ok(BranchState {
        resources,
        declared,
    })
}

/// The conflicts of a merge as the API shows them.
pub(super) fn conflict_views(
    conflicts: Vec<efms_domain::config::plans::MergeConflict>,
) -> Vec<MergeConflict> {
    conflicts
        .into_iter()
        .map(|c| MergeConflict {
            kind: c.kind,
            name: c.name,
            pointer: c.pointer,
            base: c.base,
            ours: c.ours,
            theirs: c.theirs,
        })
        .collect()
}
