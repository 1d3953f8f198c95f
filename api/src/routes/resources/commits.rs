//! Commits of the resource routes: one request's changes through the configuration service, and
//! the resource read back after a write.

use efms_commands::configuration::CommitRequest;
use efms_domain::config::{Change, ConfigCommand, Operation};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf, ResourceRow};

use crate::access::{Tenant, TenantAccess, WriteConfig};
use crate::error::ApiError;
use crate::extract::CommitMeta;
use crate::state::AppState;

/// Runs one commit on `branch` for the caller, who may write there, through the configuration
/// service, which waits for the read models to show it.
pub async fn commit(
    state: &AppState,
    meta: &CommitMeta,
    (tenant, branch): (&Tenant<WriteConfig>, &str),
    operation: Operation,
    changes: Vec<Change>,
) -> Result<Option<efms_commands::Position>, ApiError> {
    let request = commit_request(meta, (tenant, branch));
    Ok(state
        .configuration
        .commit(&request, operation, changes)
        .await?)
}

/// Where a commit goes and what it records of the request that caused it.
pub fn commit_request(
    meta: &CommitMeta,
    (tenant, branch): (&Tenant<WriteConfig>, &str),
) -> CommitRequest {
    CommitRequest {
        tenant_id: tenant.tenant_id,
        branch: branch.to_owned(),
        metadata: meta.metadata(tenant.actor()),
    }
}

/// Runs `command` on `branch`'s repository for the caller, who may write there, through the
/// configuration service, which waits for the read models to show it.
pub async fn execute(
    state: &AppState,
    meta: &CommitMeta,
    (tenant, branch): (&Tenant<WriteConfig>, &str),
    command: ConfigCommand,
) -> Result<Option<efms_commands::Position>, ApiError> {
    let request = commit_request(meta, (tenant, branch));
    Ok(state.configuration.execute(&request, command).await?)
}

/// Reads a resource back after a write; the commit succeeded, so a missing row means the read model
/// lags (the write is not lost).
pub(super) async fn read_back(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &str,
    kind: ResourceKind,
    name: &str,
) -> Result<ResourceRow, ApiError> {
    read::get_resource(&state.pool, tenant.tenant_id, branch, kind, name, AsOf::Now)
        .await?
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "{kind} `{name}` is committed but not readable yet; read it again shortly"
            ))
        })
}
