//! What a group gets from the group tree (FR-CL-002): its own attachments and those of each of its
//! ancestors. A resource served under one name at several levels comes from the nearest group,
//! which overrides the others (FR-EP-004).
//!
//! The rule is pure: callers hand in a lookup from a group's name to its document, so the API
//! (reading the read models at some revision) and the xDS snapshots (reading their loaded
//! content) apply the same rule.

use std::borrow::Borrow;
use std::collections::BTreeSet;

use super::group::{Attached, GroupSpec};
use crate::envoy::ResourceKind;

/// The most groups a chain of parents is followed through. Commits refuse cycles and the walk
/// stops at a group it already passed; the bound only guards against a corrupted read model.
pub const MAX_DEPTH: usize = 1_000;

/// A resource a group gets, and the group (itself or an ancestor) that attaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveAttachment {
    /// The attachment, as the group that attaches it writes it.
    pub attachment: Attached,
    /// The group that attaches it.
    pub attached_by: String,
}

impl EffectiveAttachment {
    /// The name the group's proxies know the resource by.
    pub fn served_name(&self) -> &str {
        self.attachment.served_name()
    }
}

/// What a group gets from the group tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inherited {
    /// Its effective attachments, one per kind and served name: the group's own first, then each
    /// ancestor's, nearest first, each group's in the order it lists them.
    pub attachments: Vec<EffectiveAttachment>,
    /// The group of the chain the lookup does not know (the group itself, or a parent some group
    /// names), if any: the walk stops there, with what the groups before it attach.
    pub missing: Option<String>,
}

/// What `group` gets: what it and its ancestors attach, where `lookup` gives a group's document
/// by name. A resource served under one name at several levels is reported once, from the
/// nearest group. The walk up the parents stops at a group it already passed (a cycle), after
/// [`MAX_DEPTH`] groups, or at a group `lookup` does not know (reported in
/// [`Inherited::missing`]).
pub fn effective_attachments<G: Borrow<GroupSpec>>(
    group: &str,
    mut lookup: impl FnMut(&str) -> Option<G>,
) -> Inherited {
    let mut inherited = Inherited::default();
    let mut served: BTreeSet<(ResourceKind, String)> = BTreeSet::new();
    let mut passed: BTreeSet<String> = BTreeSet::new();
    let mut next = Some(group.to_owned());
    while let Some(name) = next.take() {
        if passed.len() >= MAX_DEPTH || !passed.insert(name.clone()) {
            break;
        }
        let Some(spec) = lookup(&name) else {
            inherited.missing = Some(name);
            break;
        };
        let spec = spec.borrow();
        for attached in &spec.resources {
            // A nearer group's attachment served under the same name overrides this one.
            if served.insert((attached.kind, attached.served_name().to_owned())) {
                inherited.attachments.push(EffectiveAttachment {
                    attachment: attached.clone(),
                    attached_by: name.clone(),
                });
            }
        }
        next.clone_from(&spec.parent);
    }
    inherited
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn attached(kind: ResourceKind, name: &str, alias: Option<&str>) -> Attached {
        Attached {
            kind,
            name: name.to_owned(),
            alias: alias.map(str::to_owned),
        }
    }

    fn group(name: &str, parent: Option<&str>, resources: Vec<Attached>) -> (String, GroupSpec) {
        let spec = GroupSpec {
            name: name.to_owned(),
            description: None,
            parent: parent.map(str::to_owned),
            selector: super::super::group::Selector::default(),
            resources,
            branch: None,
        };
        (name.to_owned(), spec)
    }

    /// (kind, name, alias, attached by) of each effective attachment.
    fn summary(inherited: &Inherited) -> Vec<(ResourceKind, &str, Option<&str>, &str)> {
        inherited
            .attachments
            .iter()
            .map(|a| {
                (
                    a.attachment.kind,
                    a.attachment.name.as_str(),
                    a.attachment.alias.as_deref(),
                    a.attached_by.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn a_group_gets_its_own_attachments_then_each_ancestors_nearest_first() {
        let groups: BTreeMap<_, _> = [
            group(
                "root",
                None,
                vec![attached(ResourceKind::Listener, "http", None)],
            ),
            group(
                "eu",
                Some("root"),
                vec![attached(ResourceKind::Cluster, "backend", None)],
            ),
            group(
                "eu-west",
                Some("eu"),
                vec![attached(ResourceKind::Secret, "cert", None)],
            ),
        ]
        .into_iter()
        .collect();
        let inherited = effective_attachments("eu-west", |name| groups.get(name));
        assert_eq!(
            summary(&inherited),
            [
                (ResourceKind::Secret, "cert", None, "eu-west"),
                (ResourceKind::Cluster, "backend", None, "eu"),
                (ResourceKind::Listener, "http", None, "root"),
            ]
        );
        assert_eq!(inherited.missing, None);
    }

    #[test]
    fn the_nearest_group_wins_a_name_served_at_several_levels() {
        let groups: BTreeMap<_, _> = [
            group(
                "root",
                None,
                vec![
                    attached(ResourceKind::Cluster, "backend", None),
                    attached(ResourceKind::Cluster, "legacy", Some("api")),
                    attached(ResourceKind::Route, "backend", None),
                ],
            ),
            group(
                "eu",
                Some("root"),
                vec![
                    attached(ResourceKind::Cluster, "backend-eu", Some("backend")),
                    attached(ResourceKind::Cluster, "api", None),
                ],
            ),
        ]
        .into_iter()
        .collect();
        let inherited = effective_attachments("eu", |name| groups.get(name));
        // Served names are per kind: the route `backend` is not the cluster `backend`.
        assert_eq!(
            summary(&inherited),
            [
                (ResourceKind::Cluster, "backend-eu", Some("backend"), "eu"),
                (ResourceKind::Cluster, "api", None, "eu"),
                (ResourceKind::Route, "backend", None, "root"),
            ]
        );
        assert_eq!(inherited.attachments[0].served_name(), "backend");
    }

    #[test]
    fn an_unknown_group_or_parent_is_reported_with_what_comes_before_it() {
        let groups: BTreeMap<_, _> = [group(
            "eu",
            Some("gone"),
            vec![attached(ResourceKind::Cluster, "backend", None)],
        )]
        .into_iter()
        .collect();
        let inherited = effective_attachments("eu", |name| groups.get(name));
        assert_eq!(
            summary(&inherited),
            [(ResourceKind::Cluster, "backend", None, "eu")]
        );
        assert_eq!(inherited.missing.as_deref(), Some("gone"));
        let unknown = effective_attachments("nope", |name| groups.get(name));
        assert_eq!(
            unknown,
            Inherited {
                attachments: Vec::new(),
                missing: Some("nope".to_owned()),
            }
        );
    }

    #[test]
    fn a_cycle_of_parents_ends_the_walk_where_it_comes_back() {
        let groups: BTreeMap<_, _> = [
            group(
                "a",
                Some("b"),
                vec![attached(ResourceKind::Cluster, "x", None)],
            ),
            group(
                "b",
                Some("a"),
                vec![attached(ResourceKind::Cluster, "y", None)],
            ),
        ]
        .into_iter()
        .collect();
        let mut lookups = 0;
        let inherited = effective_attachments("a", |name| {
            lookups += 1;
            groups.get(name)
        });
        assert_eq!(
            summary(&inherited),
            [
                (ResourceKind::Cluster, "x", None, "a"),
                (ResourceKind::Cluster, "y", None, "b"),
            ]
        );
        assert_eq!((inherited.missing, lookups), (None, 2));
    }

    #[test]
    fn a_chain_deeper_than_the_bound_is_followed_only_that_far() {
        let groups: BTreeMap<_, _> = (0..=MAX_DEPTH)
            .map(|level| {
                let parent = (level < MAX_DEPTH).then(|| format!("g{}", level + 1));
                group(
                    &format!("g{level}"),
                    parent.as_deref(),
                    vec![attached(ResourceKind::Cluster, &format!("c{level}"), None)],
                )
            })
            .collect();
        // Owned documents work as well as borrowed ones.
        let inherited = effective_attachments("g0", |name| groups.get(name).cloned());
        assert_eq!(inherited.attachments.len(), MAX_DEPTH);
        assert_eq!(
            inherited.attachments.last().map(|a| a.attached_by.as_str()),
            Some(format!("g{}", MAX_DEPTH - 1).as_str())
        );
        assert_eq!(inherited.missing, None);
    }
}
