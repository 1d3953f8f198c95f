//! The store of the xDS snapshots: per tenant, the content loaded for its groups (its `main`, the
//! branches groups are pinned to, what other tenants share), refreshed whenever the
//! configuration projector moves, and published to every stream that follows a group.
//!
//! A refresh reads only what changed (resources whose hash moved) and applies it to the live
//! content in place, under the lock, once every read has succeeded; only the groups whose
//! snapshot read something that changed are built again. A group's other snapshots keep their
//! resources and move to the new revision.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use efms_commands::Keyring;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::load::{grants_of, heads_of, load};
use efms_domain::envoy::ResourceKind;

use super::model::{Content, ContentChange, GroupSnapshot, Imports, Reads, Touched, MAIN_BRANCH};
use crate::ProjectorHandle;

/// A group some stream follows: where its snapshots go, and what the last one read.
#[derive(Debug)]
struct Watcher {
    sender: watch::Sender<Arc<GroupSnapshot>>,
    reads: Reads,
}

/// What the store knows of one tenant.
#[derive(Debug, Default)]
struct TenantState {
    /// `main`: where groups are resolved and pinned.
    main: Arc<Content>,
    /// Each live branch that a group on `main` is pinned to.
    branches: HashMap<String, Arc<Content>>,
    /// What other tenants share with this one.
    imports: Imports,
    watchers: HashMap<String, Watcher>,
}

impl TenantState {
    /// The branch `group`'s snapshot is built from: the branch it is pinned to on `main` when
    /// that branch is live, else `main`.
    fn source(&self, group: &str) -> (&str, &Content) {
        self.main
            .groups
            .get(group)
            .and_then(|(_, spec)| spec.branch.as_deref())
            .and_then(|branch| {
                self.branches
                    .get(branch)
                    .map(|content| (branch, content.as_ref()))
            })
            .unwrap_or((MAIN_BRANCH, self.main.as_ref()))
    }

    /// The snapshot of `group`, and what building it read.
    fn snapshot(&self, tenant_id: Uuid, group: &str) -> (GroupSnapshot, Reads) {
        let (branch, content) = self.source(group);
        content.snapshot(tenant_id, group, branch, &self.imports)
    }

    /// The branches groups on `main` are pinned to.
    fn pins(main: &Content) -> BTreeSet<String> {
        main.groups
            .values()
            .filter_map(|(_, spec)| spec.branch.clone())
            .collect()
    }
}

/// What a refresh read of one tenant, to apply at once.
#[derive(Debug, Default)]
struct Reload {
    /// `main`'s change, when it moved.
    main: Option<ContentChange>,
    /// Per pinned branch that moved: its change, or `None` when it is not live.
    branches: Vec<(String, Option<ContentChange>)>,
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
        if let Some(watcher) = state.watchers.get(group) {
            return Ok(watcher.sender.subscribe());
        }
        let (snapshot, reads) = state.snapshot(tenant_id, group);
        let (sender, receiver) = watch::channel(Arc::new(snapshot));
        state
            .watchers
            .insert(group.to_owned(), Watcher { sender, reads });
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
            Some(watcher) => watcher.sender.borrow().clone(),
            None => Arc::new(state.snapshot(tenant_id, group).0),
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
        let mut main = Content::default();
        if let Some(change) = load(self.sources(), tenant_id, MAIN_BRANCH, &main).await? {
            main.apply(change);
        }
        for branch in TenantState::pins(&main) {
            let mut content = Content::default();
            if let Some(change) = load(self.sources(), tenant_id, &branch, &content).await? {
                content.apply(change);
                state.branches.insert(branch, Arc::new(content));
            }
        }
        state.main = Arc::new(main);
        let grants = grants_of(&self.pool, &[tenant_id]).await?;
        let grants = grants.get(&tenant_id).map_or(&[][..], Vec::as_slice);
        for grant in grants {
            if let std::collections::hash_map::Entry::Vacant(entry) = owners.entry(grant.owner_id) {
                let mut content = Content::default();
                if let Some(change) =
                    load(self.sources(), grant.owner_id, MAIN_BRANCH, &content).await?
                {
                    content.apply(change);
                }
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
        let heads = heads_of(&self.pool, &read_heads).await?;
        // The owners' `main` first: their changes reach the grantees' proxies.
        owners.retain(|owner_id, _| owner_ids.contains(owner_id));
        for owner_id in &owner_ids {
            let head = heads
                .get(&(*owner_id, MAIN_BRANCH.to_owned()))
                .copied()
                .unwrap_or_default();
            let content = owners.entry(*owner_id).or_default();
            if content.revision != head {
                match load(self.sources(), *owner_id, MAIN_BRANCH, content).await {
                    Ok(Some(change)) => {
                        content.apply(change);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(owner = %owner_id, %error, "reading a tenant's shared clusters failed");
                    }
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
            // Read what changed against the live content without holding the lock: streams keep
            // reading (and new ones joining) it meanwhile, and a failed read leaves it as it was.
            let Some((main, branches, mut imports)) = self
                .tenants
                .lock()
                .expect("snapshot store lock")
                .get(&tenant_id)
                .map(|state| {
                    (
                        state.main.clone(),
                        state.branches.clone(),
                        state.imports.clone(),
                    )
                })
            else {
                continue;
            };
            let reload = match self.reload(tenant_id, &main, &branches, head).await {
                Ok(reload) => reload,
                Err(error) => {
                    // The others are refreshed all the same; this one is retried on the next move.
                    tracing::warn!(tenant = %tenant_id, %error, "refreshing a tenant's snapshots failed");
                    continue;
                }
            };
            drop((main, branches));
            let granted = grants.get(&tenant_id).map_or(&[][..], Vec::as_slice);
            let (imported, imports_touched) = imports.update(granted, &owners);
            if reload.main.is_none() && reload.branches.is_empty() && !imported {
                continue;
            }
            let mut tenants = self.tenants.lock().expect("snapshot store lock");
            let Some(state) = tenants.get_mut(&tenant_id) else {
                continue;
            };
            state.imports = imports;
            state.publish(tenant_id, reload, &imports_touched);
        }
        Ok(())
    }

    /// Reads what moved in `main` and in the branches groups are (or will be) pinned to, against
    /// the live contents given.
    async fn reload(
        &self,
        tenant_id: Uuid,
        main: &Content,
        branches: &HashMap<String, Arc<Content>>,
        head: impl Fn(&str) -> u64,
    ) -> Result<Reload, sqlx::Error> {
        let mut reload = Reload::default();
        let mut pins = TenantState::pins(main);
        if head(MAIN_BRANCH) != main.revision {
            let change = load(self.sources(), tenant_id, MAIN_BRANCH, main)
                .await?
                .unwrap_or_default();
            // Branches newly pinned by this change are read too.
            pins.extend(
                change
                    .groups
                    .iter()
                    .filter_map(|(_, group)| group.as_ref()?.1.branch.clone()),
            );
            reload.main = Some(change);
        }
        let empty = Content::default();
        for branch in pins {
            let known = branches.get(&branch);
            if known.map(|content| content.revision) == Some(head(&branch)) {
                continue;
            }
            let base = known.map_or(&empty, AsRef::as_ref);
            let change = load(self.sources(), tenant_id, &branch, base).await?;
            reload.branches.push((branch, change));
        }
        Ok(reload)
    }
}

impl TenantState {
    /// Applies what a refresh read, then builds again the snapshots of the groups it may change
    /// (their source branch changed, or something they read did) and publishes those whose content
    /// differs; the others move to the new revision as they are.
    fn publish(
        &mut self,
        tenant_id: Uuid,
        reload: Reload,
        imports_touched: &BTreeSet<(ResourceKind, String)>,
    ) {
        let mut touched: HashMap<String, Touched> = HashMap::new();
        if let Some(change) = reload.main {
            let applied = Arc::make_mut(&mut self.main).apply(change);
            touched.insert(MAIN_BRANCH.to_owned(), applied);
        }
        for (branch, change) in reload.branches {
            match change {
                Some(change) => {
                    let content = self.branches.entry(branch.clone()).or_default();
                    let applied = Arc::make_mut(content).apply(change);
                    touched.insert(branch, applied);
                }
                None => {
                    self.branches.remove(&branch);
                }
            }
        }
        let pins = Self::pins(&self.main);
        self.branches.retain(|branch, _| pins.contains(branch));
        self.watchers
            .retain(|_, watcher| watcher.sender.receiver_count() > 0);
        let groups: Vec<String> = self.watchers.keys().cloned().collect();
        for group in groups {
            let (branch, content) = self.source(&group);
            let watcher = &self.watchers[&group];
            let current = watcher.sender.borrow().clone();
            let rebuild = current.branch != branch
                || touched
                    .get(branch)
                    .is_some_and(|touched| touched.affects(&watcher.reads))
                || imports_touched
                    .iter()
                    .any(|key| watcher.reads.resources.contains(key));
            if !rebuild {
                if current.revision != content.revision {
                    let moved = Arc::new(current.at_revision(content.revision));
                    watcher.sender.send_if_modified(|current| {
                        *current = moved;
                        false
                    });
                }
                continue;
            }
            let (snapshot, reads) = self.snapshot(tenant_id, &group);
            let snapshot = snapshot.following(&current);
            let watcher = self.watchers.get_mut(&group).expect("listed above");
            watcher.reads = reads;
            watcher.sender.send_if_modified(|current| {
                let changed = !current.same_content(&snapshot);
                *current = Arc::new(snapshot);
                changed
            });
        }
    }
}
