//! Proxy groups (FR-CL-001, FR-CL-002): a hierarchical, logical grouping of proxies. A group says
//! which proxies belong to it (its selector), which group it is part of (its parent), and which
//! resources it attaches; a child inherits what its ancestors attach.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envoy::{check_name, ResourceKind, Violation};
use crate::json_pointer;

/// A group as written and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The group it belongs to; `None` for a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Which proxies belong to it.
    #[serde(default)]
    pub selector: Selector,
    /// The resources it attaches (its descendants inherit them).
    #[serde(default)]
    pub resources: Vec<Attached>,
    /// The branch its proxies follow instead of `main` (a canary). Only the pin on `main`
    /// counts; the group, its attachments and everything they refer to are then read from that
    /// branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// Which proxies belong to a group: all conditions given must hold; an empty selector matches
/// no proxy by itself (a group can be a pure parent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The proxy's `node.cluster` must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cluster: Option<String>,
    /// The proxy's `node.metadata` must hold each of these string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A resource a group attaches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attached {
    /// Its kind (`cluster`, `endpoints`, `listener`, `route`, `secret`).
    pub kind: ResourceKind,
    /// Its name.
    pub name: String,
    /// The name the group's proxies know it by, when not its own: it then overrides, for this
    /// group and its descendants, the resource of that name an ancestor attaches or a resource
    /// refers to (FR-EP-004).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl Attached {
    /// The name the group's proxies know the resource by.
    pub fn served_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

/// Validates a group's JSON and returns its name and canonical form (attachments sorted, no
/// duplicates).
pub fn validate(json: &Value) -> Result<(String, Value, GroupSpec), Vec<Violation>> {
    let mut track = serde_path_to_error::Track::new();
    let spec: GroupSpec = GroupSpec::deserialize(serde_path_to_error::Deserializer::new(
        json, &mut track,
    ))
    .map_err(|error| {
        let message = error.to_string();
        let pointer = json_pointer::of_error(&track.path(), &message);
        vec![Violation { pointer, message }]
    })?;
    let mut violations = Vec::new();
    if let Err(message) = check_name(&spec.name) {
        violations.push(Violation {
            pointer: "/name".to_owned(),
            message,
        });
    }
    if let Some(parent) = &spec.parent {
        if let Err(message) = check_name(parent) {
            violations.push(Violation {
                pointer: "/parent".to_owned(),
                message,
            });
        } else if *parent == spec.name {
            violations.push(Violation {
                pointer: "/parent".to_owned(),
                message: "a group cannot be its own parent".to_owned(),
            });
        }
    }
    if let Some(branch) = &spec.branch {
        if let Err(message) = super::valid_branch_name(branch) {
            violations.push(Violation {
                pointer: "/branch".to_owned(),
                message,
            });
        }
    }
    let mut served = BTreeMap::new();
    for (index, attached) in spec.resources.iter().enumerate() {
        if let Some(alias) = &attached.alias {
            if let Err(message) = check_name(alias) {
                violations.push(Violation {
                    pointer: format!("/resources/{index}/as"),
                    message,
                });
            }
        }
        let source = served
            .entry((attached.kind, attached.served_name().to_owned()))
            .or_insert_with(|| attached.name.clone());
        if *source != attached.name {
            violations.push(Violation {
                pointer: format!("/resources/{index}"),
                message: format!(
                    "two attachments serve the {} `{}`",
                    attached.kind,
                    attached.served_name()
                ),
            });
        }
        if attached.kind == ResourceKind::Group || attached.kind == ResourceKind::Template {
            violations.push(Violation {
                pointer: format!("/resources/{index}/kind"),
                message: "groups are related by `parent`, and templates reach proxies through what is declared from them; neither is attached".to_owned(),
            });
        }
        if let Err(message) = check_name(&attached.name) {
            violations.push(Violation {
                pointer: format!("/resources/{index}/name"),
                message,
            });
        }
    }
    if json.to_string().contains("\\u0000") {
        violations.push(Violation {
            pointer: String::new(),
            message: "text may not contain NUL (U+0000)".to_owned(),
        });
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    let mut spec = spec;
    spec.resources.sort();
    spec.resources.dedup();
    let canonical = serde_json::to_value(&spec).expect("a group serialises");
    Ok((spec.name.clone(), canonical, spec))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_group_is_canonicalised_with_sorted_unique_attachments() {
        let (name, canonical, _) = validate(&json!({
            "name": "edge",
            "parent": "all",
            "selector": { "node_cluster": "edge", "metadata": { "zone": "a" } },
            "resources": [
                { "kind": "listener", "name": "ingress_http" },
                { "kind": "cluster", "name": "service_a" },
                { "kind": "listener", "name": "ingress_http" }
            ]
        }))
        .unwrap();
        assert_eq!(name, "edge");
        assert_eq!(
            canonical["resources"],
            json!([
                { "kind": "cluster", "name": "service_a" },
                { "kind": "listener", "name": "ingress_http" }
            ])
        );
    }

    #[test]
    fn unknown_fields_bad_kinds_and_self_parents_are_named() {
        let pointer = |json: Value| validate(&json).unwrap_err()[0].pointer.clone();
        assert_eq!(pointer(json!({ "name": "g", "selectr": {} })), "/selectr");
        assert_eq!(
            pointer(json!({ "name": "g", "resources": [{ "kind": "gadget", "name": "x" }] })),
            "/resources/0/kind"
        );
        assert_eq!(pointer(json!({ "name": "g", "parent": "g" })), "/parent");
        assert_eq!(
            pointer(json!({ "name": "g", "resources": [{ "kind": "group", "name": "h" }] })),
            "/resources/0/kind"
        );
        assert_eq!(pointer(json!({ "parent": "p" })), "/name");
    }

    #[test]
    fn two_attachments_may_not_serve_one_name_and_aliases_are_names() {
        let pointer = |json: Value| validate(&json).unwrap_err()[0].pointer.clone();
        assert_eq!(
            pointer(json!({ "name": "g", "resources": [
                { "kind": "cluster", "name": "a" },
                { "kind": "cluster", "name": "b", "as": "a" }] })),
            "/resources/1"
        );
        assert_eq!(
            pointer(
                json!({ "name": "g", "resources": [{ "kind": "cluster", "name": "a", "as": "" }] })
            ),
            "/resources/0/as"
        );
        let (_, canonical, spec) = validate(
            &json!({ "name": "g", "resources": [{ "kind": "cluster", "name": "b", "as": "a" }] }),
        )
        .unwrap();
        assert_eq!(canonical["resources"][0]["as"], "a");
        assert_eq!(spec.resources[0].served_name(), "a");
    }
}
