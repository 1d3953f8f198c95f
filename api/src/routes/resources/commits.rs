//! Commits of the resource routes: one request's changes through the configuration service, and
//! the resource read back after a write.

use efms_commands::configuration::CommitRequest;
use efms_domain::config::{Change, ConfigCommand, Operation};
use efms_domain::envoy::ResourceKind;
use efms_domain::Actor;
use efms_projections::config::{self as read, AsOf, ResourceRow};

use crate::access::TenantAccess;
use crate::error::ApiError;
use crate::extract::CommitMeta;
use crate::state::AppState;

/// Runs one commit on `branch` for `actor` through the configuration service, which waits for
/// the read models to show it.
pub async fn commit(
    state: &AppState,
    actor: &Actor,
    meta: &CommitMeta,
    (tenant, branch): (&TenantAccess, &str),
    operation: Operation,
    changes: Vec<Change>,
) -> Result<Option<efms_commands::Position>, ApiError> {
    let request = commit_request(actor, meta, (tenant, branch));
    Ok(state
        .configuration
        .commit(&request, operation, changes)
        .await?)
}

/// Where a commit goes and what it records of the request that caused it.
fn commit_request(
    actor: &Actor,
    meta: &CommitMeta,
    (tenant, branch): (&TenantAccess, &str),
) -> CommitRequest {
    CommitRequest {
        tenant_id: tenant.tenant_id,
        branch: branch.to_owned(),
        metadata: meta.metadata(actor),
    }
}

/// Runs `command` on `branch`'s repository for `actor` through the configuration service, which
/// waits for the read models to show it.
pub async fn execute(
    state: &AppState,
    actor: &Actor,
    meta: &CommitMeta,
    (tenant, branch): (&TenantAccess, &str),
    command: ConfigCommand,
) -> Result<Option<efms_commands::Position>, ApiError> {
    let request = commit_request(actor, meta, (tenant, branch));
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
