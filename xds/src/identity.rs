//! Who is on a stream (NFR-SE-001, INT-XDS-003): the bearer token in the gRPC metadata says which
//! tenant the caller may read (and, for a bootstrap's proxy token, which group); the node in the
//! first request says which proxy it is and, with the tenant's groups, which group's configuration
//! it gets.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use efms_commands::credentials::Revocable;
use efms_domain::{Actor, Role, TenantSlug};
use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::metadata::MetadataMap;
use tonic::Status;
use uuid::Uuid;

/// Checks a bearer token and returns who it speaks for, or why it is refused.
pub type Authenticator = Arc<dyn Fn(&str) -> Result<Credentials, String> + Send + Sync>;

/// What a verified bearer token says: who it speaks for, and what ends a stream opened with it.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The caller.
    pub actor: Actor,
    /// When the token expires; its streams end then.
    pub expires_at: Option<DateTime<Utc>>,
    /// The user or proxy token whose deletion, change or revocation withdraws the token.
    pub revocable: Option<Revocable>,
    /// The group a bootstrap's proxy token is bound to: its streams get that group and no other.
    pub group: Option<String>,
}

/// The node metadata key naming the proxy's tenant (its slug).
pub const TENANT_KEY: &str = "tenant";
/// The node metadata key naming the proxy's group.
pub const GROUP_KEY: &str = "group";

/// The principal behind a stream, from its `authorization` metadata: `system`, `admin`,
/// `operator` and `proxy` tokens may stream configuration.
pub fn authenticate(
    metadata: &MetadataMap,
    authenticator: &Authenticator,
) -> Result<Credentials, Status> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated("an xDS stream needs `authorization: Bearer <token>` metadata")
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
        })?;
    let credentials = authenticator(token.trim()).map_err(Status::unauthenticated)?;
    match credentials.actor.role {
        Role::System | Role::Admin | Role::Operator | Role::Proxy => Ok(credentials),
        Role::Viewer | Role::Auditor => Err(Status::permission_denied(format!(
            "the `{}` role cannot stream configuration; use a `proxy` token",
            credentials.actor.role
        ))),
    }
}

/// A proxy as it identifies itself in its first request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node.id`: the proxy's identity.
    pub node_id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata`, its string values.
    pub metadata: BTreeMap<String, String>,
    /// The Envoy version it reports (`1.40.0`), if any.
    pub envoy_version: Option<String>,
}

impl NodeInfo {
    /// Reads the node of a first request.
    pub fn from_node(node: Option<&Node>) -> Result<Self, Status> {
        let node = node.ok_or_else(|| {
            Status::invalid_argument("the first request of a stream must carry the node")
        })?;
        if node.id.is_empty() || node.id.len() > 253 || node.id.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "node.id must be 1 to 253 characters without control characters",
            ));
        }
        let metadata = node
            .metadata
            .as_ref()
            .map(|metadata| {
                metadata
                    .fields
                    .iter()
                    .filter_map(|(key, value)| match &value.kind {
                        Some(Kind::StringValue(text)) => Some((key.clone(), text.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let envoy_version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentBuildVersion(build)) => build
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)),
            Some(UserAgentVersionType::UserAgentVersion(version)) => Some(version.clone()),
            None => None,
        };
        Ok(Self {
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            metadata,
            envoy_version,
        })
    }

    /// The group a token bound to `bound` streams: the node's metadata `group`, when it names
    /// one, must be that group.
    pub fn bound_group(&self, bound: &str) -> Result<String, Status> {
        match self.metadata.get(GROUP_KEY) {
            Some(claimed) if claimed != bound => Err(Status::permission_denied(format!(
                "the token is bound to group `{bound}`; node `{}` claims group `{claimed}`",
                self.node_id
            ))),
            _ => Ok(bound.to_owned()),
        }
    }

    /// The tenant the proxy belongs to: its metadata's `tenant`, else the token's; they must agree,
    /// and a `system` token must be told.
    pub fn tenant(&self, actor: &Actor) -> Result<(TenantSlug, Uuid), Status> {
        let named = match self.metadata.get(TENANT_KEY) {
            Some(slug) => Some(TenantSlug::parse(slug).map_err(|_| {
                Status::invalid_argument(format!(
                    "node metadata `tenant` is not a tenant slug: `{slug}`"
                ))
            })?),
            None => None,
        };
        let slug = match (named, &actor.tenant) {
            (Some(named), Some(own)) if named != *own => {
                return Err(Status::permission_denied(format!(
                    "the token is for tenant `{own}`, the node says `{named}`"
                )))
            }
            (Some(named), _) => named,
            (None, Some(own)) => own.clone(),
            (None, None) => {
                return Err(Status::invalid_argument(
                    "with a `system` token the node metadata must name the `tenant`",
                ))
            }
        };
        let id = slug.tenant_id();
        Ok((slug, id))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    fn node(metadata: &[(&str, &str)]) -> Node {
        Node {
            id: "edge-1".to_owned(),
            cluster: "edge".to_owned(),
            metadata: Some(Struct {
                fields: metadata
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(Kind::StringValue((*v).to_owned())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Node::default()
        }
    }

    fn actor(role: Role, tenant: Option<&str>) -> Actor {
        Actor {
            subject: "t".to_owned(),
            role,
            tenant: tenant.map(|t| TenantSlug::parse(t).unwrap()),
        }
    }

    #[test]
    fn the_tenant_comes_from_the_token_or_a_matching_node() {
        let info = NodeInfo::from_node(Some(&node(&[]))).unwrap();
        assert_eq!(
            info.tenant(&actor(Role::Proxy, Some("acme")))
                .unwrap()
                .0
                .as_str(),
            "acme"
        );
        assert!(info.tenant(&actor(Role::System, None)).is_err());

        let info = NodeInfo::from_node(Some(&node(&[("tenant", "acme")]))).unwrap();
        assert_eq!(
            info.tenant(&actor(Role::System, None)).unwrap().0.as_str(),
            "acme"
        );
        let refused = info
            .tenant(&actor(Role::Proxy, Some("globex")))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_bound_token_streams_its_group_and_refuses_a_node_that_claims_another() {
        let info = NodeInfo::from_node(Some(&node(&[]))).unwrap();
        assert_eq!(info.bound_group("edge").unwrap(), "edge");
        let info = NodeInfo::from_node(Some(&node(&[("group", "edge")]))).unwrap();
        assert_eq!(info.bound_group("edge").unwrap(), "edge");
        let refused = info.bound_group("core").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("`edge`"), "{refused:?}");
    }

    #[test]
    fn a_node_without_an_id_is_refused() {
        let mut bad = node(&[]);
        bad.id.clear();
        assert_eq!(
            NodeInfo::from_node(Some(&bad)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(NodeInfo::from_node(None).is_err());
    }
}
