//! What a group gets, as the read model holds it: the chain of its ancestors read group by group,
//! and the domain's one rule of which attachment wins (FR-CL-002).

use std::collections::BTreeMap;

use efms_domain::config::group::GroupSpec;
use efms_domain::config::inheritance::{self, Inherited};
use efms_domain::envoy::ResourceKind;
use sqlx::PgPool;
use uuid::Uuid;

use super::queries::{get_resource, AsOf};
use crate::ProjectionError;

/// Everything `group` attaches on `branch` as of `as_of`, its own first, then each ancestor's; a
/// resource served under one name at several levels is reported once, from the nearest. The
/// walk stops at a group the read model does not hold, named in [`Inherited::missing`].
pub async fn group_resources(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    group: &str,
    as_of: AsOf,
) -> Result<Inherited, ProjectionError> {
    let mut groups: BTreeMap<String, GroupSpec> = BTreeMap::new();
    let mut next = Some(group.to_owned());
    while let Some(name) = next.take() {
        if groups.contains_key(&name) || groups.len() >= inheritance::MAX_DEPTH {
            break;
        }
        let row = get_resource(pool, tenant_id, branch, ResourceKind::Group, &name, as_of);
        let Some(row) = row.await? else {
            break;
        };
        let spec: GroupSpec = serde_json::from_value(row.document)?;
        next.clone_from(&spec.parent);
        groups.insert(name, spec);
    }
    Ok(inheritance::effective_attachments(group, |name| {
        groups.get(name)
    }))
}
