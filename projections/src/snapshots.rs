//! xDS snapshots (DESIGN §7): per proxy group, the Envoy resources its proxies get, encoded once
//! and shared by every stream of the group.
//!
//! A group's snapshot holds what the group and its ancestors attach (FR-CL-002), plus everything
//! those resources refer to (a listener brings its route configuration, a route its clusters, an
//! EDS cluster its endpoints, a TLS context its secrets), so attaching a listener is enough. Every
//! resource's version is its content hash: a commit that changes nothing a group's proxies see
//! wakes none of them.
//!
//! The store follows the configuration projector: whenever its checkpoint moves, the tenants whose
//! head revision changed are re-read (only resources whose hash changed are fetched and encoded
//! again) and the snapshots of their groups are replaced. Each replica keeps its own store, so any
//! replica can serve any proxy.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use efms_commands::{Keyring, Scope};
use efms_domain::config::group::GroupSpec;
use efms_domain::config::shared::qualified;
use efms_domain::config::{references, ResourceRef};
use efms_domain::envoy::{self, ResourceKind};
use efms_domain::secrets;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::ProjectorHandle;

/// The branch proxies follow unless their group is pinned to another.
const MAIN_BRANCH: &str = "main";

/// The Envoy kinds, in the order a proxy should receive them (make before break).
pub const XDS_KINDS: [ResourceKind; 5] = [
    ResourceKind::Cluster,
    ResourceKind::Endpoints,
    ResourceKind::Secret,
    ResourceKind::Listener,
    ResourceKind::Route,
];

/// One encoded Envoy resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsResource {
    /// Its name.
    pub name: String,
    /// Its version: a prefix of its content hash.
    pub version: String,
    /// Its protobuf encoding (the `value` of the `Any` Envoy receives).
    pub body: Vec<u8>,
}

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
    pub resources: BTreeMap<ResourceKind, BTreeMap<String, Arc<XdsResource>>>,
    /// The version of every Envoy kind's whole set (see [`set_version`]), computed once.
    pub versions: BTreeMap<ResourceKind, String>,
}

impl GroupSnapshot {
    fn empty(tenant_id: Uuid, group: &str, branch: &str, revision: u64) -> Self {
        Self {
            tenant_id,
            group: group.to_owned(),
            branch: branch.to_owned(),
            revision,
            exists: false,
            resources: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }

    /// Computes the per-kind versions; called once the resources are in.
    fn seal(mut self) -> Self {
        self.versions = XDS_KINDS
            .into_iter()
            .map(|kind| {
                let version = set_version(
                    self.of_kind(kind)
                        .map(|r| (r.name.as_str(), r.version.as_str())),
                );
                (kind, version)
            })
            .collect();
        self
    }

    /// The resources of `kind`.
    pub fn of_kind(&self, kind: ResourceKind) -> impl Iterator<Item = &Arc<XdsResource>> {
        self.resources
            .get(&kind)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// The resource `name` of `kind`.
    pub fn get(&self, kind: ResourceKind, name: &str) -> Option<&Arc<XdsResource>> {
        self.resources.get(&kind)?.get(name)
    }

    /// The version of everything of `kind` (see [`set_version`]).
    pub fn kind_version(&self, kind: ResourceKind) -> &str {
        self.versions.get(&kind).map_or("", String::as_str)
    }

    /// Whether the proxies would see the same resources in both snapshots.
    pub fn same_content(&self, other: &Self) -> bool {
        self.exists == other.exists && self.versions == other.versions
    }
}

/// The version of a set of resources: a hash of their names and versions, so equal sets have equal
/// versions whichever stream, replica or protocol computes it.
pub fn set_version<'a>(resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<_> = resources.into_iter().collect();
    pairs.sort_unstable();
    let mut hasher = Sha256::new();
    for (name, version) in pairs {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(version.as_bytes());
        hasher.update([b'\n']);
    }
    short_hex(&hasher.finalize())
}

fn short_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(16);
    for byte in &bytes[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// One stored Envoy resource of a tenant, with what it refers to.
#[derive(Debug, Clone)]
struct Stored {
    hash: String,
    refs: BTreeSet<ResourceRef>,
    encoded: Arc<XdsResource>,
    /// Its canonical document, to serve it under another name (a group's override).
    document: Arc<serde_json::Value>,
}

impl Stored {
    /// The resource served as `served` instead of its own name. An EDS cluster keeps asking for
    /// its own endpoints. `None` when it does not encode (logged).
    fn renamed(&self, kind: ResourceKind, source: &str, served: &str) -> Option<Arc<XdsResource>> {
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
            Some(Arc::new(XdsResource {
                name: served.to_owned(),
                version: short_hex(&hasher.finalize()),
                body,
            }))
        }
        Err(error) => {
            tracing::error!(%kind, served, %error, "a resource does not encode under the name it is served as");
            None
        }
    }
}

/// A cluster another tenant shares with this one (FR-MT-005).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    owner_id: Uuid,
    owner_slug: String,
    name: String,
}

/// What other tenants share with one tenant, as its proxies get it: each shared cluster and its
/// endpoints under their qualified names (`owner/name`).
#[derive(Debug, Default, Clone)]
struct Imports {
    /// What they were built from: the grants, each with its owner's `main` revision.
    basis: Vec<(Grant, u64)>,
    resources: HashMap<(ResourceKind, String), Arc<Stored>>,
}

impl Imports {
    /// Builds the imports of `grants` from the owners' `main` contents.
    fn build(grants: &[Grant], owners: &HashMap<Uuid, Content>) -> Self {
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

    /// Rebuilds the imports when the grants or their owners moved; whether they did.
    fn update(&mut self, grants: &[Grant], owners: &HashMap<Uuid, Content>) -> bool {
        let basis: Vec<(Grant, u64)> = grants
            .iter()
            .filter_map(|grant| {
                let owner = owners.get(&grant.owner_id)?;
                Some((grant.clone(), owner.revision))
            })
            .collect();
        if basis == self.basis {
            return false;
        }
        *self = Imports::build(grants, owners);
        true
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

/// The Envoy resources and groups of one branch of a tenant, at one revision.
#[derive(Debug, Default, Clone)]
struct Content {
    revision: u64,
    resources: HashMap<(ResourceKind, String), Arc<Stored>>,
    groups: BTreeMap<String, (String, GroupSpec)>,
}

/// What the store knows of one tenant.
#[derive(Debug, Default)]
struct TenantState {
    /// `main`: where groups are resolved and pinned.
    main: Content,
    /// Each live branch that a group on `main` is pinned to.
    branches: HashMap<String, Content>,
    /// What other tenants share with this one.
    imports: Imports,
    watchers: HashMap<String, watch::Sender<Arc<GroupSnapshot>>>,
}

impl TenantState {
    /// The snapshot of `group`: from the branch it is pinned to on `main` when that branch is
    /// live, else from `main`.
    fn snapshot(&self, tenant_id: Uuid, group: &str) -> GroupSnapshot {
        let pinned = self
            .main
            .groups
            .get(group)
            .and_then(|(_, spec)| spec.branch.as_deref())
            .and_then(|branch| self.branches.get(branch).map(|content| (branch, content)));
        match pinned {
            Some((branch, content)) => content.snapshot(tenant_id, group, branch, &self.imports),
            None => self
                .main
                .snapshot(tenant_id, group, MAIN_BRANCH, &self.imports),
        }
    }

    /// The branches groups on `main` are pinned to.
    fn pins(main: &Content) -> BTreeSet<String> {
        main.groups
            .values()
            .filter_map(|(_, spec)| spec.branch.clone())
            .collect()
    }

    /// A copy of the content, for a refresh to load into.
    fn scratch(&self) -> TenantState {
        TenantState {
            main: self.main.clone(),
            branches: self.branches.clone(),
            imports: self.imports.clone(),
            watchers: HashMap::new(),
        }
    }
}

impl Content {
    /// The snapshot of `group` from this content.
    fn snapshot(
        &self,
        tenant_id: Uuid,
        group: &str,
        branch: &str,
        imports: &Imports,
    ) -> GroupSnapshot {
        let mut snapshot = GroupSnapshot::empty(tenant_id, group, branch, self.revision);
        if !self.groups.contains_key(group) {
            return snapshot.seal();
        }
        snapshot.exists = true;
        let mut queue: VecDeque<ResourceRef> = VecDeque::new();
        // (kind, name proxies know) → the resource served under it; the nearest group wins.
        let mut overrides: HashMap<(ResourceKind, String), String> = HashMap::new();
        let mut next = Some(group.to_owned());
        let mut seen_groups = BTreeSet::new();
        while let Some(name) = next.take() {
            if !seen_groups.insert(name.clone()) {
                break;
            }
            let Some((_, spec)) = self.groups.get(&name) else {
                break;
            };
            for attached in &spec.resources {
                let served = attached.served_name().to_owned();
                if attached.alias.is_some() {
                    overrides
                        .entry((attached.kind, served.clone()))
                        .or_insert_with(|| attached.name.clone());
                }
                queue.push_back(ResourceRef {
                    kind: attached.kind,
                    name: served,
                });
            }
            next.clone_from(&spec.parent);
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
            let Some(stored) = self
                .resources
                .get(&key)
                .or_else(|| imports.resources.get(&key))
            else {
                continue;
            };
            let encoded = if *source == reference.name {
                Some(stored.encoded.clone())
            } else {
                stored.renamed(reference.kind, source, &reference.name)
            };
            if let Some(encoded) = encoded {
                snapshot
                    .resources
                    .entry(reference.kind)
                    .or_default()
                    .insert(reference.name.clone(), encoded);
                queue.extend(stored.refs.iter().cloned());
            }
        }
        snapshot.seal()
    }

    /// The group a proxy belongs to, from its `node.cluster` and metadata: the deepest group whose
    /// selector matches (ties broken by name), else the group named like its `node.cluster`.
    fn resolve(&self, node_cluster: &str, metadata: &BTreeMap<String, String>) -> Option<String> {
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

/// The snapshots of every group some proxy of this replica follows.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    pool: PgPool,
    keyring: Keyring,
    tenants: Arc<Mutex<HashMap<Uuid, TenantState>>>,
    /// Held while loading or refreshing; guards the `main` contents of the tenants that share
    /// clusters with loaded tenants.
    refreshing: Arc<tokio::sync::Mutex<HashMap<Uuid, Content>>>,
}

impl SnapshotStore {
    /// An empty store over `pool`'s read models; tenants load when a proxy first asks. Secrets
    /// are opened with `keyring` for their tenant's proxies.
    pub fn new(pool: PgPool, keyring: Keyring) -> Self {
        Self {
            pool,
            keyring,
            tenants: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// Keeps the store current: refreshes it whenever the configuration projector moves, until
    /// the projector stops.
    pub fn follow(&self, mut config: ProjectorHandle) {
        let store = self.clone();
        tokio::spawn(async move {
            while config.changed().await.is_some() {
                if let Err(error) = store.refresh().await {
                    tracing::error!(%error, "refreshing xDS snapshots failed; retrying on the next change");
                }
            }
        });
    }

    /// Follows `group` of `tenant_id`: the receiver always holds the group's current snapshot and
    /// wakes when what its proxies see changes.
    pub async fn watch(
        &self,
        tenant_id: Uuid,
        group: &str,
    ) -> Result<watch::Receiver<Arc<GroupSnapshot>>, sqlx::Error> {
        self.ensure_loaded(tenant_id).await?;
        let mut tenants = self.tenants.lock().expect("snapshot store lock");
        let state = tenants.get_mut(&tenant_id).expect("the tenant was loaded");
        if let Some(sender) = state.watchers.get(group) {
            return Ok(sender.subscribe());
        }
        let snapshot = Arc::new(state.snapshot(tenant_id, group));
        let (sender, receiver) = watch::channel(snapshot);
        state.watchers.insert(group.to_owned(), sender);
        Ok(receiver)
    }

    /// The current snapshot of `group`, built if no proxy follows it.
    pub async fn current(
        &self,
        tenant_id: Uuid,
        group: &str,
    ) -> Result<Arc<GroupSnapshot>, sqlx::Error> {
        self.ensure_loaded(tenant_id).await?;
        let tenants = self.tenants.lock().expect("snapshot store lock");
        let state = &tenants[&tenant_id];
        Ok(match state.watchers.get(group) {
            Some(sender) => sender.borrow().clone(),
            None => Arc::new(state.snapshot(tenant_id, group)),
        })
    }

    /// The group a proxy of `tenant_id` belongs to, from its `node.cluster` and string metadata:
    /// the deepest group whose selector matches it, else the group named like its `node.cluster`.
    pub async fn resolve_group(
        &self,
        tenant_id: Uuid,
        node_cluster: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Option<String>, sqlx::Error> {
        self.ensure_loaded(tenant_id).await?;
        let tenants = self.tenants.lock().expect("snapshot store lock");
        Ok(tenants[&tenant_id].main.resolve(node_cluster, metadata))
    }

    fn sources(&self) -> (&PgPool, &Keyring) {
        (&self.pool, &self.keyring)
    }

    async fn ensure_loaded(&self, tenant_id: Uuid) -> Result<(), sqlx::Error> {
        let loaded = || {
            self.tenants
                .lock()
                .expect("snapshot store lock")
                .contains_key(&tenant_id)
        };
        if loaded() {
            return Ok(());
        }
        let mut owners = self.refreshing.lock().await;
        if loaded() {
            return Ok(());
        }
        let mut state = TenantState::default();
        load(self.sources(), tenant_id, MAIN_BRANCH, &mut state.main).await?;
        for branch in TenantState::pins(&state.main) {
            let mut content = Content::default();
            if load(self.sources(), tenant_id, &branch, &mut content).await? {
                state.branches.insert(branch, content);
            }
        }
        let grants = grants_of(&self.pool, &[tenant_id]).await?;
        let grants = grants.get(&tenant_id).map_or(&[][..], Vec::as_slice);
        for grant in grants {
            if let std::collections::hash_map::Entry::Vacant(entry) = owners.entry(grant.owner_id) {
                let mut content = Content::default();
                load(self.sources(), grant.owner_id, MAIN_BRANCH, &mut content).await?;
                entry.insert(content);
            }
        }
        state.imports = Imports::build(grants, &owners);
        self.tenants
            .lock()
            .expect("snapshot store lock")
            .insert(tenant_id, state);
        Ok(())
    }

    /// Re-reads every loaded tenant whose `main`, or a branch one of its groups is pinned to,
    /// moved, and republishes its groups' snapshots; groups nobody follows any more are forgotten.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let mut owners = self.refreshing.lock().await;
        let ids: Vec<Uuid> = self
            .tenants
            .lock()
            .expect("snapshot store lock")
            .keys()
            .copied()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let grants = grants_of(&self.pool, &ids).await?;
        let owner_ids: BTreeSet<Uuid> = grants
            .values()
            .flatten()
            .map(|grant| grant.owner_id)
            .collect();
        let mut read_heads = ids.clone();
        read_heads.extend(owner_ids.iter().copied());
        let mut tx = Scope::System.begin(&self.pool).await?;
        let heads: HashMap<(Uuid, String), u64> = sqlx::query!(
            r#"SELECT tenant_id, branch, max(revision) AS "revision!"
               FROM config_revisions WHERE tenant_id = ANY($1)
               GROUP BY tenant_id, branch"#,
            &read_heads,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| {
            let revision = u64::try_from(row.revision).unwrap_or_default();
            ((row.tenant_id, row.branch), revision)
        })
        .collect();
        tx.rollback().await?;
        // The owners' `main` first: their changes reach the grantees' proxies.
        owners.retain(|owner_id, _| owner_ids.contains(owner_id));
        for owner_id in &owner_ids {
            let head = heads
                .get(&(*owner_id, MAIN_BRANCH.to_owned()))
                .copied()
                .unwrap_or_default();
            let content = owners.entry(*owner_id).or_default();
            if content.revision != head {
                if let Err(error) = load(self.sources(), *owner_id, MAIN_BRANCH, content).await {
                    tracing::warn!(owner = %owner_id, %error, "reading a tenant's shared clusters failed");
                }
            }
        }
        for tenant_id in ids {
            let head = |branch: &str| {
                heads
                    .get(&(tenant_id, branch.to_owned()))
                    .copied()
                    .unwrap_or_default()
            };
            // Load into a copy: streams keep reading (and new ones joining) the live state
            // meanwhile, and a failed load leaves it as it was.
            let Some(mut scratch) = self
                .tenants
                .lock()
                .expect("snapshot store lock")
                .get(&tenant_id)
                .map(TenantState::scratch)
            else {
                continue;
            };
            let moved = match self.reload(tenant_id, &mut scratch, head).await {
                Ok(moved) => moved,
                Err(error) => {
                    // The others are refreshed all the same; this one is retried on the next move.
                    tracing::warn!(tenant = %tenant_id, %error, "refreshing a tenant's snapshots failed");
                    continue;
                }
            };
            let granted = grants.get(&tenant_id).map_or(&[][..], Vec::as_slice);
            let imported = scratch.imports.update(granted, &owners);
            if !moved && !imported {
                continue;
            }
            let mut tenants = self.tenants.lock().expect("snapshot store lock");
            let Some(state) = tenants.get_mut(&tenant_id) else {
                continue;
            };
            state.main = scratch.main;
            state.branches = scratch.branches;
            state.imports = scratch.imports;
            state
                .watchers
                .retain(|_, sender| sender.receiver_count() > 0);
            for (group, sender) in &state.watchers {
                let snapshot = state.snapshot(tenant_id, group);
                sender.send_if_modified(|current| {
                    let changed = !current.same_content(&snapshot);
                    *current = Arc::new(snapshot);
                    changed
                });
            }
        }
        Ok(())
    }

    /// Brings `main` and the pinned branches of `state` up to their heads; whether anything moved.
    async fn reload(
        &self,
        tenant_id: Uuid,
        state: &mut TenantState,
        head: impl Fn(&str) -> u64,
    ) -> Result<bool, sqlx::Error> {
        let mut moved = false;
        if head(MAIN_BRANCH) != state.main.revision {
            load(self.sources(), tenant_id, MAIN_BRANCH, &mut state.main).await?;
            moved = true;
        }
        let pins = TenantState::pins(&state.main);
        let before = state.branches.len();
        state.branches.retain(|branch, _| pins.contains(branch));
        moved |= state.branches.len() != before;
        for branch in pins {
            let known = state.branches.get(&branch).map(|content| content.revision);
            if known == Some(head(&branch)) {
                continue;
            }
            let mut content = state.branches.remove(&branch).unwrap_or_default();
            if load(self.sources(), tenant_id, &branch, &mut content).await? {
                state.branches.insert(branch, content);
            }
            moved = true;
        }
        Ok(moved)
    }
}

/// The clusters shared with each of `tenant_ids`, in a stable order.
async fn grants_of(
    pool: &PgPool,
    tenant_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Grant>>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT grantee_id, tenant_id, owner_slug, name FROM resource_grants
           WHERE grantee_id = ANY($1) AND kind = 'cluster'
           ORDER BY grantee_id, owner_slug, name"#,
        tenant_ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    let mut grants: HashMap<Uuid, Vec<Grant>> = HashMap::new();
    for row in rows {
        grants.entry(row.grantee_id).or_default().push(Grant {
            owner_id: row.tenant_id,
            owner_slug: row.owner_slug,
            name: row.name,
        });
    }
    Ok(grants)
}

/// Opens the sealed material of a tenant's secret, with that tenant's data keys.
async fn open_secret(
    keyring: &Keyring,
    tenant_id: Uuid,
    document: &mut serde_json::Value,
) -> Result<(), String> {
    let mut keys = HashMap::new();
    for key_id in secrets::sealed_key_ids(document) {
        let key = keyring
            .get(tenant_id, &key_id)
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("no data key `{key_id}`"))?;
        keys.insert(key_id, key);
    }
    secrets::open_document(document, &|id| keys.get(id).cloned()).map_err(|error| error.to_string())
}

/// Brings `state` up to the head revision of the tenant's `branch`: one consistent read of the
/// resource list, then the documents of the resources whose hash changed. Returns whether the
/// branch is live (`main` always is; a deleted or unknown branch loads nothing).
#[allow(clippy::too_many_lines)]
async fn load(
    (pool, keyring): (&PgPool, &Keyring),
    tenant_id: Uuid,
    branch: &str,
    state: &mut Content,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL ROLE efms_system")
        .execute(&mut *tx)
        .await?;
    if branch != MAIN_BRANCH {
        let live = sqlx::query_scalar!(
            r#"SELECT deleted_at IS NULL AS "live!" FROM config_branches
               WHERE tenant_id = $1 AND name = $2"#,
            tenant_id,
            branch,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if live != Some(true) {
            return Ok(false);
        }
    }
    let revision = sqlx::query_scalar!(
        r#"SELECT coalesce(max(revision), 0) AS "revision!" FROM config_revisions
           WHERE tenant_id = $1 AND branch = $2"#,
        tenant_id,
        branch,
    )
    .fetch_one(&mut *tx)
    .await?;
    let listed = sqlx::query!(
        "SELECT kind, name, hash FROM config_resources WHERE tenant_id = $1 AND branch = $2",
        tenant_id,
        branch,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut live: HashMap<(ResourceKind, String), String> = HashMap::with_capacity(listed.len());
    for row in listed {
        if let Ok(kind) =
            serde_json::from_value::<ResourceKind>(serde_json::Value::String(row.kind))
        {
            live.insert((kind, row.name), row.hash);
        }
    }
    let mut group_hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut stale_kinds = Vec::new();
    let mut stale_names = Vec::new();
    // Templates reach no proxy: what is rendered from them does.
    live.retain(|(kind, _), _| *kind != ResourceKind::Template);
    for ((kind, name), hash) in &live {
        let known = match kind {
            ResourceKind::Group => state.groups.get(name).map(|(h, _)| h),
            _ => state.resources.get(&(*kind, name.clone())).map(|s| &s.hash),
        };
        if known != Some(hash) {
            stale_kinds.push(kind.to_string());
            stale_names.push(name.clone());
        }
        if *kind == ResourceKind::Group {
            group_hashes.insert(name.clone(), hash.clone());
        }
    }
    let documents = sqlx::query!(
        r#"SELECT r.kind, r.name, r.hash, r.document
           FROM config_resources r
           JOIN UNNEST($3::text[], $4::text[]) AS wanted(kind, name)
             ON r.kind = wanted.kind AND r.name = wanted.name
           WHERE r.tenant_id = $1 AND r.branch = $2"#,
        tenant_id,
        branch,
        &stale_kinds,
        &stale_names,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;

    state.resources.retain(|key, _| live.contains_key(key));
    state
        .groups
        .retain(|name, _| group_hashes.contains_key(name));
    for row in documents {
        let Ok(kind) = serde_json::from_value::<ResourceKind>(serde_json::Value::String(row.kind))
        else {
            continue;
        };
        if kind == ResourceKind::Group {
            match serde_json::from_value::<GroupSpec>(row.document) {
                Ok(spec) => {
                    state.groups.insert(row.name, (row.hash, spec));
                }
                Err(error) => {
                    tracing::error!(group = row.name, %error, "a stored group does not decode");
                }
            }
            continue;
        }
        let mut document = row.document;
        if kind == ResourceKind::Secret {
            if let Err(error) = open_secret(keyring, tenant_id, &mut document).await {
                tracing::error!(name = row.name, %error, "a stored secret does not open; it is not served");
                continue;
            }
        }
        let row_document = document;
        match envoy::encode(kind, &row_document) {
            Ok(body) => {
                let refs = references(kind, &row_document);
                let document = Arc::new(row_document);
                let encoded = Arc::new(XdsResource {
                    name: row.name.clone(),
                    version: row.hash[..16.min(row.hash.len())].to_owned(),
                    body,
                });
                state.resources.insert(
                    (kind, row.name),
                    Arc::new(Stored {
                        hash: row.hash,
                        refs,
                        encoded,
                        document,
                    }),
                );
            }
            Err(error) => {
                tracing::error!(%kind, name = row.name, %error, "a stored resource does not encode");
            }
        }
    }
    state.revision = u64::try_from(revision).unwrap_or_default();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use efms_domain::config::group::{Attached, Selector};

    use super::*;

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

    #[test]
    fn a_set_version_depends_on_content_not_order() {
        let a = set_version([("a", "1"), ("b", "2")]);
        assert_eq!(a, set_version([("b", "2"), ("a", "1")]));
        assert_ne!(a, set_version([("a", "1"), ("b", "3")]));
        assert_ne!(a, set_version([("a", "1")]));
        assert_eq!(a.len(), 16);
    }
}
