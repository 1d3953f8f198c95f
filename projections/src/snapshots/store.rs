//! The store of the xDS snapshots: per tenant, the content loaded for its groups (its `main`, the
//! branches groups are pinned to, what other tenants share), refreshed whenever the
//! configuration projector moves, and published to every stream that follows a group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use efms_commands::Keyring;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::load::{grants_of, heads_of, load};
use super::model::{Content, GroupSnapshot, Imports, MAIN_BRANCH};
use crate::ProjectorHandle;

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
