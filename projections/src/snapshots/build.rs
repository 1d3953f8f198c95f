//! The pure build of the xDS snapshots: what a group gets from a branch's content and what other
//! tenants share (FR-CL-002, FR-EP-004, FR-MT-005), encoded for its proxies; and which group a
//! proxy belongs to. No I/O: the store loads the content, this computes from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use efms_domain::config::group::Attached;
use efms_domain::config::shared::qualified;
use efms_domain::config::{inheritance, ResourceRef};
use efms_domain::envoy::{self, ResourceKind};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::model::{short_hex, Content, Grant, GroupSnapshot, Imports, Reads, Stored, XdsResource};

impl Stored {
    /// The resource served as `served` instead of its own name. An EDS cluster keeps asking for
    /// its own endpoints. `None` when it does not encode (logged).
    pub(super) fn renamed(
        &self,
        kind: ResourceKind,
        source: &str,
        served: &str,
    ) -> Option<Arc<XdsResource>> {
        let mut document = (*self.document).clone();
        let object = document.as_object_mut()?;
        object.insert(kind.name_field().to_owned(), served.into());
        if kind == ResourceKind::Cluster {
            if let Some(eds) = object
                .get_mut("eds_cluster_config")
                .and_then(serde_json::Value::as_object_mut)
            {
                let named = eds
                    .get("service_name")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|name| !name.is_empty());
                if !named {
                    eds.insert("service_name".to_owned(), source.into());
                }
            }
        }
        encode_as(kind, &document, &self.hash, served)
    }
}

/// `document` (whose content hash is `hash`) encoded under the name `served`, with a version of
/// its own. `None` when it does not encode (logged).
fn encode_as(
    kind: ResourceKind,
    document: &serde_json::Value,
    hash: &str,
    served: &str,
) -> Option<Arc<XdsResource>> {
    match envoy::encode(kind, document) {
        Ok(body) => {
            let mut hasher = Sha256::new();
            hasher.update(hash.as_bytes());
            hasher.update([0]);
            hasher.update(served.as_bytes());
            Some(Arc::new(XdsResource::new(
                kind,
                served.to_owned(),
                short_hex(&hasher.finalize()),
                &body,
            )))
        }
        Err(error) => {
            tracing::error!(%kind, served, %error, "a resource does not encode under the name it is served as");
            None
        }
    }
}

impl Imports {
    /// Builds the imports of `grants` from the owners' `main` contents.
    pub(super) fn build(grants: &[Grant], owners: &HashMap<Uuid, Content>) -> Self {
        let mut imports = Imports::default();
        for grant in grants {
            let Some(owner) = owners.get(&grant.owner_id) else {
                continue;
            };
            imports.basis.push((grant.clone(), owner.revision));
            imports.import_cluster(owner, grant);
        }
        imports
    }

    /// Rebuilds the imports when the grants or their owners moved; whether they did, and the
    /// qualified names whose imported resource changed.
    pub(super) fn update(
        &mut self,
        grants: &[Grant],
        owners: &HashMap<Uuid, Content>,
    ) -> (bool, BTreeSet<(ResourceKind, String)>) {
        let basis: Vec<(Grant, u64)> = grants
            .iter()
            .filter_map(|grant| {
                let owner = owners.get(&grant.owner_id)?;
                Some((grant.clone(), owner.revision))
            })
            .collect();
        if basis == self.basis {
            return (false, BTreeSet::new());
        }
        let rebuilt = Imports::build(grants, owners);
        let mut touched: BTreeSet<(ResourceKind, String)> = self
            .resources
            .keys()
            .filter(|key| !rebuilt.resources.contains_key(*key))
            .cloned()
            .collect();
        for (key, stored) in &rebuilt.resources {
            let same = self
                .resources
                .get(key)
                .is_some_and(|old| old.encoded == stored.encoded && old.refs == stored.refs);
            if !same {
                touched.insert(key.clone());
            }
        }
        *self = rebuilt;
        (true, touched)
    }

    fn import_cluster(&mut self, owner: &Content, grant: &Grant) {
        let Some(stored) = owner
            .resources
            .get(&(ResourceKind::Cluster, grant.name.clone()))
        else {
            return;
        };
        if stored
            .refs
            .iter()
            .any(|r| r.kind != ResourceKind::Endpoints)
        {
            tracing::warn!(
                owner = grant.owner_slug,
                cluster = grant.name,
                "a shared cluster that uses secrets is not served to other tenants"
            );
            return;
        }
        let served = qualified(&grant.owner_slug, &grant.name);
        let mut document = (*stored.document).clone();
        let Some(object) = document.as_object_mut() else {
            return;
        };
        object.insert("name".to_owned(), served.clone().into());
        let mut refs = BTreeSet::new();
        for endpoints_ref in &stored.refs {
            let endpoints_name = qualified(&grant.owner_slug, &endpoints_ref.name);
            if let Some(eds) = object
                .get_mut("eds_cluster_config")
                .and_then(serde_json::Value::as_object_mut)
            {
                eds.insert("service_name".to_owned(), endpoints_name.clone().into());
            }
            let key = (ResourceKind::Endpoints, endpoints_ref.name.clone());
            if let Some(endpoints) = owner.resources.get(&key) {
                let mut assignment = (*endpoints.document).clone();
                if let Some(object) = assignment.as_object_mut() {
                    object.insert("cluster_name".to_owned(), endpoints_name.clone().into());
                }
                if let Some(encoded) = encode_as(
                    ResourceKind::Endpoints,
                    &assignment,
                    &endpoints.hash,
                    &endpoints_name,
                ) {
                    self.resources.insert(
                        (ResourceKind::Endpoints, endpoints_name.clone()),
                        Arc::new(Stored {
                            hash: endpoints.hash.clone(),
                            refs: BTreeSet::new(),
                            encoded,
                            document: Arc::new(assignment),
                        }),
                    );
                }
            }
            refs.insert(ResourceRef {
                kind: ResourceKind::Endpoints,
                name: endpoints_name,
            });
        }
        if let Some(encoded) = encode_as(ResourceKind::Cluster, &document, &stored.hash, &served) {
            self.resources.insert(
                (ResourceKind::Cluster, served),
                Arc::new(Stored {
                    hash: stored.hash.clone(),
                    refs,
                    encoded,
                    document: Arc::new(document),
                }),
            );
        }
    }
}

impl Content {
    /// The snapshot of `group` from this content, and what building it looked up.
    pub(super) fn snapshot(
        &self,
        tenant_id: Uuid,
        group: &str,
        branch: &str,
        imports: &Imports,
    ) -> (GroupSnapshot, Reads) {
        let mut snapshot = GroupSnapshot::empty(tenant_id, group, branch, self.revision);
        let mut reads = Reads::default();
        reads.groups.insert(group.to_owned());
        if !self.groups.contains_key(group) {
            return (snapshot.seal(), reads);
        }
        snapshot.exists = true;
        // What the group and its ancestors attach, one per served name, the nearest group's
        // winning (FR-CL-002). An ancestor that is not loaded ends the chain there.
        let inherited = inheritance::effective_attachments(group, |name| {
            reads.groups.insert(name.to_owned());
            self.groups.get(name).map(|(_, spec)| spec)
        });
        let mut queue: VecDeque<ResourceRef> = VecDeque::new();
        // (kind, name proxies know) → the resource served under it, for an attachment that
        // overrides a name (FR-EP-004); what refers to that name gets it too.
        let mut overrides: HashMap<(ResourceKind, String), String> = HashMap::new();
        for effective in inherited.attachments {
            let Attached { kind, name, alias } = effective.attachment;
            let served = match alias {
                Some(served) => {
                    overrides.insert((kind, served.clone()), name);
                    served
                }
                None => name,
            };
            queue.push_back(ResourceRef { kind, name: served });
        }
        let mut included = BTreeSet::new();
        while let Some(reference) = queue.pop_front() {
            if !included.insert(reference.clone()) {
                continue;
            }
            let source = overrides
                .get(&(reference.kind, reference.name.clone()))
                .unwrap_or(&reference.name);
            let key = (reference.kind, source.clone());
            let found = self
                .resources
                .get(&key)
                .or_else(|| imports.resources.get(&key));
            reads.resources.insert(key);
            let Some(stored) = found else {
                continue;
            };
            let encoded = if *source == reference.name {
                Some(stored.encoded.clone())
            } else {
                stored.renamed(reference.kind, source, &reference.name)
            };
            if let Some(encoded) = encoded {
                Arc::make_mut(snapshot.resources.entry(reference.kind).or_default())
                    .insert(reference.name.clone(), encoded);
                queue.extend(stored.refs.iter().cloned());
            }
        }
        (snapshot.seal(), reads)
    }

    /// The group a proxy belongs to, from its `node.cluster` and metadata: the deepest group whose
    /// selector matches (ties broken by name), else the group named like its `node.cluster`.
    pub(super) fn resolve(
        &self,
        node_cluster: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Option<String> {
        let depth = |name: &str| {
            let mut depth = 0;
            let mut next = self.groups.get(name).and_then(|(_, s)| s.parent.clone());
            while let Some(parent) = next {
                depth += 1;
                if depth > 1_000 {
                    break;
                }
                next = self.groups.get(&parent).and_then(|(_, s)| s.parent.clone());
            }
            depth
        };
        let matching = self.groups.iter().filter(|(_, (_, spec))| {
            let selector = &spec.selector;
            let any = selector.node_cluster.is_some() || !selector.metadata.is_empty();
            any && selector
                .node_cluster
                .as_ref()
                .is_none_or(|cluster| cluster == node_cluster)
                && selector
                    .metadata
                    .iter()
                    .all(|(key, value)| metadata.get(key) == Some(value))
        });
        let mut best: Option<(usize, &String)> = None;
        for (name, _) in matching {
            let d = depth(name);
            if best.is_none_or(|(best_depth, _)| d > best_depth) {
                best = Some((d, name));
            }
        }
        best.map(|(_, name)| name.clone()).or_else(|| {
            self.groups
                .contains_key(node_cluster)
                .then(|| node_cluster.to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use efms_domain::config::group::{GroupSpec, Selector};
    use efms_domain::config::references;
    use serde_json::json;

    use super::*;

    /// A stored resource, encoded under its own name with a version of its own.
    fn stored(kind: ResourceKind, document: serde_json::Value) -> Arc<Stored> {
        let name = document[kind.name_field()].as_str().unwrap().to_owned();
        let hash = format!("{name:0>16}");
        Arc::new(Stored {
            hash: hash.clone(),
            refs: references(kind, &document),
            encoded: Arc::new(XdsResource::new(
                kind,
                name,
                hash,
                &envoy::encode(kind, &document).unwrap(),
            )),
            document: Arc::new(document),
        })
    }

    /// A group under `parent` attaching clusters, each by name and maybe under an alias.
    fn attaching(parent: Option<&str>, clusters: &[(&str, Option<&str>)]) -> GroupSpec {
        GroupSpec {
            resources: clusters
                .iter()
                .map(|(name, alias)| Attached {
                    kind: ResourceKind::Cluster,
                    name: (*name).to_owned(),
                    alias: alias.map(str::to_owned),
                })
                .collect(),
            ..group(parent, None, &[])
        }
    }

    #[test]
    fn a_groups_own_attachment_wins_over_an_ancestors_override_of_its_name() {
        let mut content = Content::default();
        for document in [
            json!({ "name": "backend", "connect_timeout": "1s" }),
            json!({ "name": "backend-eu", "connect_timeout": "2s" }),
        ] {
            let stored = stored(ResourceKind::Cluster, document);
            let key = (ResourceKind::Cluster, stored.encoded.name.clone());
            content.resources.insert(key, stored);
        }
        for (name, spec) in [
            ("all", attaching(None, &[("backend-eu", Some("backend"))])),
            ("eu", attaching(Some("all"), &[("backend", None)])),
        ] {
            content
                .groups
                .insert(name.to_owned(), (String::new(), spec));
        }
        let served = |group: &str| {
            let (snapshot, _) = content.snapshot(Uuid::nil(), group, "main", &Imports::default());
            assert_eq!(snapshot.of_kind(ResourceKind::Cluster).count(), 1);
            snapshot
                .get(ResourceKind::Cluster, "backend")
                .unwrap()
                .clone()
        };
        let own = &content.resources[&(ResourceKind::Cluster, "backend".to_owned())].encoded;
        assert_eq!(&served("eu"), own);
        assert_ne!(served("all").body, own.body);
    }

    fn group(parent: Option<&str>, cluster: Option<&str>, metadata: &[(&str, &str)]) -> GroupSpec {
        GroupSpec {
            name: String::new(),
            description: None,
            parent: parent.map(str::to_owned),
            selector: Selector {
                node_cluster: cluster.map(str::to_owned),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
            resources: vec![Attached {
                kind: ResourceKind::Cluster,
                name: "c".to_owned(),
                alias: None,
            }],
            branch: None,
        }
    }

    #[test]
    fn a_proxy_belongs_to_the_deepest_matching_group_else_the_one_named_like_its_cluster() {
        let mut state = Content::default();
        for (name, spec) in [
            ("all", group(None, Some("edge"), &[])),
            ("eu", group(Some("all"), Some("edge"), &[("region", "eu")])),
            ("plain", group(None, None, &[])),
        ] {
            state.groups.insert(name.to_owned(), (String::new(), spec));
        }
        let metadata = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            state
                .resolve("edge", &metadata(&[("region", "eu")]))
                .as_deref(),
            Some("eu")
        );
        assert_eq!(
            state
                .resolve("edge", &metadata(&[("region", "us")]))
                .as_deref(),
            Some("all")
        );
        assert_eq!(
            state.resolve("plain", &metadata(&[])).as_deref(),
            Some("plain")
        );
        assert_eq!(state.resolve("other", &metadata(&[])), None);
    }
}
