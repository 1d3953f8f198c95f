//! The model of the xDS snapshots: what a group's proxies get ([`GroupSnapshot`], made of
//! [`XdsResource`]s, each Envoy kind's set with one version), and the content snapshots are built
//! from (a branch's stored resources and groups, and what other tenants share).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use efms_domain::config::group::GroupSpec;
use efms_domain::config::ResourceRef;
use efms_domain::envoy::ResourceKind;
use uuid::Uuid;

use super::set_hash::{member_hash, SetHash};

/// The branch proxies follow unless their group is pinned to another.
pub(super) use efms_domain::config::MAIN_BRANCH;

/// The Envoy kinds, in the order a proxy should receive them (make before break).
pub const XDS_KINDS: [ResourceKind; 5] = [
    ResourceKind::Cluster,
    ResourceKind::Endpoints,
    ResourceKind::Secret,
    ResourceKind::Listener,
    ResourceKind::Route,
];

/// One encoded Envoy resource, framed once for every response that carries it.
///
/// One buffer holds the resource as a delta response lists it (a `Resource` field: name, version
/// and the `Any`); the `Any` inside it is framed as a State-of-the-World response lists it, and the
/// message itself is the tail. Streams share the buffer (`Bytes`), so no stream encodes or copies
/// a resource of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsResource {
    /// Its name.
    pub name: String,
    /// Its version: a prefix of its content hash.
    pub version: String,
    /// Its protobuf encoding (the `value` of the `Any` Envoy receives).
    pub body: Bytes,
    /// The `Any` holding it, framed as field 2 of a `DiscoveryResponse` (its `resources`).
    pub sotw_field: Bytes,
    /// The `Resource` holding it, framed as field 2 of a `DeltaDiscoveryResponse` (its
    /// `resources`).
    pub delta_field: Bytes,
    /// Its share of the version of a set that holds it (see [`SetHash`]).
    pub member: u128,
}

impl XdsResource {
    /// The resource `name` of `kind` at `version`, whose protobuf encoding is `body`.
    pub fn new(kind: ResourceKind, name: String, version: String, body: &[u8]) -> Self {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
        let type_url = kind.type_url().unwrap_or_default();
        let string_len = |tag: u32, value: &str| {
            key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
        };
        let body_field = key_len(2) + encoded_len_varint(body.len() as u64) + body.len();
        let any_len = string_len(1, &type_url) + body_field;
        let any_field = key_len(2) + encoded_len_varint(any_len as u64) + any_len;
        let resource_len = string_len(3, &name) + string_len(1, &version) + any_field;
        let mut buffer = Vec::with_capacity(key_len(2) + 10 + resource_len);
        encode_key(2, WireType::LengthDelimited, &mut buffer);
        encode_varint(resource_len as u64, &mut buffer);
        prost::encoding::string::encode(3, &name, &mut buffer);
        prost::encoding::string::encode(1, &version, &mut buffer);
        let any_start = buffer.len();
        encode_key(2, WireType::LengthDelimited, &mut buffer);
        encode_varint(any_len as u64, &mut buffer);
        prost::encoding::string::encode(1, &type_url, &mut buffer);
        encode_key(2, WireType::LengthDelimited, &mut buffer);
        encode_varint(body.len() as u64, &mut buffer);
        let body_start = buffer.len();
        buffer.extend_from_slice(body);
        let delta_field = Bytes::from(buffer);
        Self {
            member: member_hash(&name, &version),
            name,
            version,
            body: delta_field.slice(body_start..),
            sotw_field: delta_field.slice(any_start..),
            delta_field,
        }
    }
}

/// Responses encoded from a snapshot, by kind and set version: the first stream to send one
/// encodes it, every other stream of the group that sends the same set shares it. Equal set
/// versions mean equal sets, so the key is enough.
#[derive(Default)]
pub struct Encodings(Arc<Mutex<HashMap<(ResourceKind, String), Bytes>>>);

/// The most encodings one snapshot keeps (streams holding removals back may each want a set of
/// their own; those beyond are encoded per stream).
const MAX_ENCODINGS: usize = 64;

impl Encodings {
    fn get_or_encode(
        &self,
        kind: ResourceKind,
        version: &str,
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        let key = (kind, version.to_owned());
        if let Some(encoded) = self.0.lock().expect("encodings lock").get(&key) {
            return encoded.clone();
        }
        let encoded = encode();
        let mut encodings = self.0.lock().expect("encodings lock");
        if encodings.len() < MAX_ENCODINGS {
            encodings.insert(key, encoded.clone());
        }
        encoded
    }

    /// The same encodings, for a snapshot of the same content.
    fn share(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Clone for Encodings {
    /// A copy starts empty: its snapshot may change.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Encodings {
    /// What a snapshot holds, not what was encoded from it, makes it what it is.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Encodings {}

impl std::fmt::Debug for Encodings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().map_or(0, |encodings| encodings.len());
        f.debug_tuple("Encodings").field(&count).finish()
    }
}

/// The resources of one kind, by name; shared by the snapshot and every stream that holds them.
pub type KindResources = Arc<BTreeMap<String, Arc<XdsResource>>>;

/// What the proxies of one group get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The group.
    pub group: String,
    /// The branch it was built from: `main`, or the branch the group is pinned to.
    pub branch: String,
    /// That branch's head revision when this snapshot was built.
    pub revision: u64,
    /// Whether the group exists at that revision.
    pub exists: bool,
    /// The resources per Envoy kind, by name.
    pub resources: BTreeMap<ResourceKind, KindResources>,
    /// Every Envoy kind's whole set (see [`SetHash`]), computed once.
    pub sets: BTreeMap<ResourceKind, SetHash>,
    /// The version of every Envoy kind's whole set, computed once.
    pub versions: BTreeMap<ResourceKind, String>,
    /// How each kind's set changed from the group's snapshot before this one.
    pub changes: Changes,
    /// Responses encoded from it, shared by its streams.
    pub encodings: Encodings,
}

/// How one kind's set changed from one snapshot of a group to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindChange {
    /// The set before.
    pub from: SetHash,
    /// The names whose resource is new, different or gone, in order.
    pub names: Vec<String>,
}

/// How each kind's set changed from a group's previous snapshot (kinds that did not change are
/// absent), computed once when the snapshot is published so that a stream holding the previous
/// set looks only at what changed.
#[derive(Debug, Clone, Default)]
pub struct Changes(Arc<BTreeMap<ResourceKind, KindChange>>);

impl Changes {
    /// The change of `kind`, if it changed.
    pub fn get(&self, kind: ResourceKind) -> Option<&KindChange> {
        self.0.get(&kind)
    }
}

impl PartialEq for Changes {
    /// Two snapshots with the same resources are the same whatever came before them.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Changes {}

impl GroupSnapshot {
    /// The snapshot of a group that does not exist (yet) at `revision`.
    pub(super) fn empty(tenant_id: Uuid, group: &str, branch: &str, revision: u64) -> Self {
        Self {
            tenant_id,
            group: group.to_owned(),
            branch: branch.to_owned(),
            revision,
            exists: false,
            resources: BTreeMap::new(),
            sets: BTreeMap::new(),
            versions: BTreeMap::new(),
            changes: Changes::default(),
            encodings: Encodings::default(),
        }
    }

    /// The same snapshot at a later `revision` of its branch that changed nothing it holds.
    pub(super) fn at_revision(&self, revision: u64) -> Self {
        Self {
            tenant_id: self.tenant_id,
            group: self.group.clone(),
            branch: self.branch.clone(),
            revision,
            exists: self.exists,
            resources: self.resources.clone(),
            sets: self.sets.clone(),
            versions: self.versions.clone(),
            changes: self.changes.clone(),
            encodings: self.encodings.share(),
        }
    }

    /// Computes the per-kind sets and versions; called once the resources are in.
    pub(super) fn seal(mut self) -> Self {
        self.sets = XDS_KINDS
            .into_iter()
            .map(|kind| {
                let mut set = SetHash::default();
                for resource in self.of_kind(kind) {
                    set.add(resource.member);
                }
                (kind, set)
            })
            .collect();
        self.versions = self
            .sets
            .iter()
            .map(|(kind, set)| (*kind, set.version()))
            .collect();
        self
    }

    /// The same snapshot, knowing that the group's proxies were given `previous` before it.
    pub(super) fn following(mut self, previous: &Self) -> Self {
        if self.same_content(previous) {
            // Nothing changed since: streams that still hold what came before `previous` may
            // still take the same shortcut.
            self.changes = previous.changes.clone();
            return self;
        }
        let mut changes = BTreeMap::new();
        for kind in XDS_KINDS {
            let from = previous.kind_set(kind);
            if from == self.kind_set(kind) {
                continue;
            }
            let empty = BTreeMap::new();
            let before = previous.resources.get(&kind).map_or(&empty, AsRef::as_ref);
            let after = self.resources.get(&kind).map_or(&empty, AsRef::as_ref);
            changes.insert(
                kind,
                KindChange {
                    from,
                    names: changed_names(before, after),
                },
            );
        }
        self.changes = Changes(Arc::new(changes));
        self
    }

    /// The resources of `kind`.
    pub fn of_kind(&self, kind: ResourceKind) -> impl Iterator<Item = &Arc<XdsResource>> {
        self.resources
            .get(&kind)
            .into_iter()
            .flat_map(|resources| resources.values())
    }

    /// Every resource of `kind`, by name, shared.
    pub fn kind_resources(&self, kind: ResourceKind) -> KindResources {
        self.resources.get(&kind).cloned().unwrap_or_default()
    }

    /// The response of the set of `kind` whose version is `version`, encoded by `encode` the first
    /// time a stream of this snapshot asks and shared from then on.
    pub fn encoded(
        &self,
        kind: ResourceKind,
        version: &str,
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        self.encodings.get_or_encode(kind, version, encode)
    }

    /// The resource `name` of `kind`.
    pub fn get(&self, kind: ResourceKind, name: &str) -> Option<&Arc<XdsResource>> {
        self.resources.get(&kind)?.get(name)
    }

    /// Everything of `kind`, summed (see [`SetHash`]).
    pub fn kind_set(&self, kind: ResourceKind) -> SetHash {
        self.sets.get(&kind).copied().unwrap_or_default()
    }

    /// The version of everything of `kind` (see [`SetHash`]).
    pub fn kind_version(&self, kind: ResourceKind) -> &str {
        self.versions.get(&kind).map_or("", String::as_str)
    }

    /// Whether the proxies would see the same resources in both snapshots.
    pub fn same_content(&self, other: &Self) -> bool {
        self.exists == other.exists && self.versions == other.versions
    }
}

/// The names whose resource differs between two sets (present in one only, or different).
fn changed_names(
    before: &BTreeMap<String, Arc<XdsResource>>,
    after: &BTreeMap<String, Arc<XdsResource>>,
) -> Vec<String> {
    let mut names = Vec::new();
    let mut before = before.iter().peekable();
    let mut after = after.iter().peekable();
    loop {
        match (before.peek(), after.peek()) {
            (None, None) => return names,
            (Some((name, _)), None) => {
                names.push((*name).clone());
                before.next();
            }
            (None, Some((name, _))) => {
                names.push((*name).clone());
                after.next();
            }
            (Some((old_name, old)), Some((new_name, new))) => match old_name.cmp(new_name) {
                std::cmp::Ordering::Less => {
                    names.push((*old_name).clone());
                    before.next();
                }
                std::cmp::Ordering::Greater => {
                    names.push((*new_name).clone());
                    after.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(old, new) && old.version != new.version {
                        names.push((*old_name).clone());
                    }
                    before.next();
                    after.next();
                }
            },
        }
    }
}

/// The first 8 bytes of a hash, in hex.
pub(super) fn short_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(16);
    for byte in &bytes[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// One stored Envoy resource of a tenant, with what it refers to.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    /// Its content hash.
    pub(super) hash: String,
    /// What it refers to.
    pub(super) refs: BTreeSet<ResourceRef>,
    /// It encoded under its own name.
    pub(super) encoded: Arc<XdsResource>,
    /// Its canonical document, to serve it under another name (a group's override).
    pub(super) document: Arc<serde_json::Value>,
}

/// A cluster another tenant shares with this one (FR-MT-005).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Grant {
    /// The owner tenant.
    pub(super) owner_id: Uuid,
    /// The owner's slug, which qualifies the names the grantee uses.
    pub(super) owner_slug: String,
    /// The cluster's name in the owner's configuration.
    pub(super) name: String,
}

/// What other tenants share with one tenant, as its proxies get it: each shared cluster and its
/// endpoints under their qualified names (`owner/name`).
#[derive(Debug, Default, Clone)]
pub(super) struct Imports {
    /// What they were built from: the grants, each with its owner's `main` revision.
    pub(super) basis: Vec<(Grant, u64)>,
    /// The shared resources, by kind and qualified name.
    pub(super) resources: HashMap<(ResourceKind, String), Arc<Stored>>,
}

/// The Envoy resources and groups of one branch of a tenant, at one revision.
#[derive(Debug, Default, Clone)]
pub(super) struct Content {
    /// The branch's head revision it was read at.
    pub(super) revision: u64,
    /// The Envoy resources, by kind and name.
    pub(super) resources: HashMap<(ResourceKind, String), Arc<Stored>>,
    /// The groups, by name: each with its content hash and document.
    pub(super) groups: BTreeMap<String, (String, GroupSpec)>,
    /// When it was last compared with the whole list of the branch's resources (a load in
    /// between reads only what changed since its revision).
    pub(super) listed_at: Option<std::time::Instant>,
    /// The last load left out something it could not read: the next one reads the whole list.
    pub(super) relist: bool,
}

/// An Envoy resource's kind and name.
pub(super) type ResourceKey = (ResourceKind, String);

/// What a load found different in a branch from the content it compared with.
#[derive(Debug, Default)]
pub(super) struct ContentChange {
    /// The branch's head revision it was read at.
    pub(super) revision: u64,
    /// Envoy resources new or changed (`Some`), or gone (`None`).
    pub(super) resources: Vec<(ResourceKey, Option<Arc<Stored>>)>,
    /// Groups new or changed (`Some`, with their hash and document), or gone (`None`).
    pub(super) groups: Vec<(String, Option<(String, GroupSpec)>)>,
    /// It compared the whole list of the branch's resources.
    pub(super) whole: bool,
    /// It left out a resource or group it could not read (it is tried again).
    pub(super) skipped: bool,
}

/// The names a change touched: snapshots that read none of them are unaffected.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Envoy resources, by kind and name (as stored, or as imported).
    pub(super) resources: BTreeSet<(ResourceKind, String)>,
    /// Groups, by name.
    pub(super) groups: BTreeSet<String>,
}

impl Touched {
    /// Whether a snapshot that read `reads` may differ after the change.
    pub(super) fn affects(&self, reads: &Reads) -> bool {
        self.groups.iter().any(|group| reads.groups.contains(group))
            || self
                .resources
                .iter()
                .any(|key| reads.resources.contains(key))
    }
}

/// What building a group's snapshot looked up, found or not: the snapshot can only change when one
/// of these does.
#[derive(Debug, Default, Clone)]
pub(super) struct Reads {
    /// The group and its ancestors (up to the first missing one).
    pub(super) groups: BTreeSet<String>,
    /// The Envoy resources, by kind and the name they are stored (or imported) under.
    pub(super) resources: HashSet<(ResourceKind, String)>,
}

impl Content {
    /// The revision it was read at, as the read models store it.
    pub(super) fn revision_i64(&self) -> i64 {
        i64::try_from(self.revision).unwrap_or(i64::MAX)
    }

    /// Applies a load's `change`; what it touched.
    pub(super) fn apply(&mut self, change: ContentChange) -> Touched {
        let mut touched = Touched::default();
        self.revision = change.revision;
        self.relist = change.skipped;
        if change.whole {
            self.listed_at = Some(std::time::Instant::now());
        }
        for (key, stored) in change.resources {
            match stored {
                Some(stored) => self.resources.insert(key.clone(), stored),
                None => self.resources.remove(&key),
            };
            touched.resources.insert(key);
        }
        for (name, group) in change.groups {
            match group {
                Some(group) => self.groups.insert(name.clone(), group),
                None => self.groups.remove(&name),
            };
            touched.groups.insert(name);
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(clusters: &[(&str, &str)]) -> GroupSnapshot {
        let mut snapshot = GroupSnapshot::empty(Uuid::nil(), "g", MAIN_BRANCH, 1);
        snapshot.exists = true;
        let resources: BTreeMap<String, Arc<XdsResource>> = clusters
            .iter()
            .map(|(name, version)| {
                let resource = XdsResource::new(
                    ResourceKind::Cluster,
                    (*name).to_owned(),
                    (*version).to_owned(),
                    b"",
                );
                ((*name).to_owned(), Arc::new(resource))
            })
            .collect();
        snapshot
            .resources
            .insert(ResourceKind::Cluster, Arc::new(resources));
        snapshot.seal()
    }

    #[test]
    fn a_snapshot_knows_which_names_changed_since_the_one_before_it() {
        let before = snapshot(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let after = snapshot(&[("b", "2"), ("c", "1"), ("d", "1")]).following(&before);
        let change = after
            .changes
            .get(ResourceKind::Cluster)
            .expect("clusters changed");
        assert_eq!(change.from, before.kind_set(ResourceKind::Cluster));
        assert_eq!(
            change.names,
            ["a", "b", "d"],
            "gone, changed, new; not the unchanged"
        );
        assert!(after.changes.get(ResourceKind::Route).is_none());
    }

    #[test]
    fn a_snapshot_equal_to_the_one_before_keeps_that_ones_changes() {
        let first = snapshot(&[("a", "1")]);
        let second = snapshot(&[("a", "2")]).following(&first);
        let again = snapshot(&[("a", "2")]).following(&second);
        let change = again.changes.get(ResourceKind::Cluster).expect("kept");
        assert_eq!(change.from, first.kind_set(ResourceKind::Cluster));
        assert_eq!(change.names, ["a"]);
    }
}
