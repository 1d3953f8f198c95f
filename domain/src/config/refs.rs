//! The references between Envoy resources (FR-EP-005): listener → route configuration (RDS),
//! route → cluster (including weighted clusters and mirrors), cluster → endpoints (EDS),
//! TLS context → secret (SDS).
//!
//! A group refers to its parent and to the resources it attaches.
//!
//! Only references resolved through the control plane count (an ADS config source, or none given):
//! a file-based SDS secret or a static cluster is not ours to check.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envoy::ResourceKind;

/// A reference from one resource to another, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceRef {
    /// The kind referred to.
    pub kind: ResourceKind,
    /// The name referred to.
    pub name: String,
}

/// The resources that the canonical document of a `kind` resource refers to.
pub fn references(kind: ResourceKind, document: &Value) -> BTreeSet<ResourceRef> {
    let mut refs = BTreeSet::new();
    match kind {
        ResourceKind::Listener => {
            walk(document, &mut |key, value| {
                if key == "rds" && uses_ads(value.get("config_source")) {
                    push(
                        &mut refs,
                        ResourceKind::Route,
                        value.get("route_config_name"),
                    );
                }
            });
            secret_refs(document, &mut refs);
        }
        ResourceKind::Route => {
            walk(document, &mut |key, value| match key {
                "route" => {
                    push(&mut refs, ResourceKind::Cluster, value.get("cluster"));
                    if let Some(Value::Array(clusters)) = value
                        .get("weighted_clusters")
                        .and_then(|w| w.get("clusters"))
                    {
                        for cluster in clusters {
                            push(&mut refs, ResourceKind::Cluster, cluster.get("name"));
                        }
                    }
                }
                "request_mirror_policies" => {
                    if let Value::Array(policies) = value {
                        for policy in policies {
                            push(&mut refs, ResourceKind::Cluster, policy.get("cluster"));
                        }
                    }
                }
                _ => {}
            });
        }
        ResourceKind::Cluster => {
            let eds = document.get("eds_cluster_config");
            let is_eds = document.get("type").and_then(Value::as_str) == Some("EDS");
            if is_eds && uses_ads(eds.and_then(|eds| eds.get("eds_config"))) {
                let service = eds
                    .and_then(|eds| eds.get("service_name"))
                    .filter(|name| name.as_str().is_some_and(|name| !name.is_empty()))
                    .or_else(|| document.get("name"));
                push(&mut refs, ResourceKind::Endpoints, service);
            }
            secret_refs(document, &mut refs);
        }
        ResourceKind::Group => {
            push(&mut refs, ResourceKind::Group, document.get("parent"));
            if let Some(Value::Array(attached)) = document.get("resources") {
                for item in attached {
                    let kind = item
                        .get("kind")
                        .cloned()
                        .and_then(|kind| serde_json::from_value::<ResourceKind>(kind).ok());
                    if let Some(kind) = kind {
                        push(&mut refs, kind, item.get("name"));
                    }
                }
            }
        }
        ResourceKind::Endpoints | ResourceKind::Secret | ResourceKind::Template => {}
    }
    refs
}

/// SDS secrets named by TLS contexts anywhere in the document.
fn secret_refs(document: &Value, refs: &mut BTreeSet<ResourceRef>) {
    walk(document, &mut |key, value| {
        let configs: Vec<&Value> = match (key, value) {
            ("tls_certificate_sds_secret_configs", Value::Array(items)) => items.iter().collect(),
            (
                "validation_context_sds_secret_config" | "session_ticket_keys_sds_secret_config",
                item,
            ) => {
                vec![item]
            }
            _ => return,
        };
        for config in configs {
            if uses_ads(config.get("sds_config")) {
                push(refs, ResourceKind::Secret, config.get("name"));
            }
        }
    });
}

/// Whether a config source resolves through the control plane: ADS, or no source at all (which
/// for SDS means "the same management server").
fn uses_ads(source: Option<&Value>) -> bool {
    match source {
        None => true,
        Some(source) => source.get("ads").is_some(),
    }
}

fn push(refs: &mut BTreeSet<ResourceRef>, kind: ResourceKind, name: Option<&Value>) {
    if let Some(name) = name.and_then(Value::as_str).filter(|name| !name.is_empty()) {
        refs.insert(ResourceRef {
            kind,
            name: name.to_owned(),
        });
    }
}

/// Calls `visit` with every key and value of every object in `value`, depth first.
fn walk(value: &Value, visit: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                visit(key, inner);
                walk(inner, visit);
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, visit);
            }
        }
        _ => {}
    }
}
