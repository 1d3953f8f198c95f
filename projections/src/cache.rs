//! An in-process cache of current resources, so a read of one resource at the head costs no
//! database round trip once it has been read.
//!
//! An entry remembers the tenant's head revision it was read at, and is served while that is still
//! the tenant's head as this replica knows it. The cache follows the configuration projector: when
//! the projector moves, it re-reads the head revisions of the tenants it holds (one query) and only
//! then reports the position as reached, so a writer that waits for its commit through
//! [`ResourceCache::follow`]'s handle reads its own write. A miss reads the resource and the head
//! revision in one statement, so an entry never pairs a document with a later head.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use efms_commands::{Position, Scope};
use efms_domain::envoy::ResourceKind;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::ResourceRow;
use crate::ProjectorHandle;

/// Entries kept at most; past it the cache starts afresh.
const MAX_ENTRIES: usize = 100_000;
/// Bytes of resources (their keys and documents) kept at most; past it the resources start afresh.
const MAX_ENTRY_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of rendered pages (their keys and texts) kept at most; past it the pages start afresh.
const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;
/// What an entry costs besides its key's text and its document: the tenant, kind, revision and
/// row fields.
const ENTRY_OVERHEAD: usize = 128;

type Key = (Uuid, ResourceKind, String);

#[derive(Debug, Default)]
struct Inner {
    /// Each cached tenant's head revision on the main branch, as last read.
    heads: HashMap<Uuid, i64>,
    /// Resources (or their absence) and the head revision they were read at.
    entries: HashMap<Key, (i64, Option<Arc<ResourceRow>>)>,
    /// The size of `entries`: their keys and documents.
    entry_bytes: usize,
    /// Rendered pages (lists) by tenant and the caller's key, and the head revision they were
    /// read at (or before).
    pages: HashMap<(Uuid, String), (i64, Arc<str>)>,
    /// The size of `pages`: their keys and texts.
    page_bytes: usize,
    /// Bumped when the cache is emptied; a fill that started before is not kept.
    generation: u64,
}

/// How much a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Resources (and absences) held.
    pub entries: usize,
    /// Their size in bytes, keys included.
    pub entry_bytes: usize,
    /// Rendered pages held.
    pub pages: usize,
    /// Their size in bytes, keys included.
    pub page_bytes: usize,
}

/// What an entry of `key` holding `row` costs.
fn entry_size(key: &Key, row: Option<&ResourceRow>) -> usize {
    ENTRY_OVERHEAD
        + key.2.len()
        + row.map_or(0, |row| {
            row.name.len()
                + row.updated_by.len()
                + efms_domain::config::limits::json_size(&row.document)
        })
}

/// What a page of `key` holding `text` costs.
fn page_size(key: &(Uuid, String), text: &str) -> usize {
    ENTRY_OVERHEAD + key.1.len() + text.len()
}

/// Current resources of the main branch, cached per replica.
#[derive(Debug, Clone)]
pub struct ResourceCache {
    pool: PgPool,
    branch: &'static str,
    inner: Arc<Mutex<Inner>>,
}

impl ResourceCache {
    /// An empty cache of `branch` over `pool`'s read models.
    pub fn new(pool: PgPool, branch: &'static str) -> Self {
        Self {
            pool,
            branch,
            inner: Arc::default(),
        }
    }

    /// How much the cache holds now.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock().expect("cache lock");
        CacheStats {
            entries: inner.entries.len(),
            entry_bytes: inner.entry_bytes,
            pages: inner.pages.len(),
            page_bytes: inner.page_bytes,
        }
    }

    /// Keeps the cache current behind `config`; the returned handle reaches a position once the
    /// cache reflects it (wait on it for read-your-writes).
    pub fn follow(&self, mut config: ProjectorHandle) -> ProjectorHandle {
        let (publish, checkpoint) = watch::channel(Position::START);
        let cache = self.clone();
        tokio::spawn(async move {
            while let Some(position) = config.changed().await {
                if let Err(error) = cache.refresh().await {
                    tracing::warn!(%error, "refreshing the resource cache failed; dropping it");
                    let mut inner = cache.inner.lock().expect("cache lock");
                    let generation = inner.generation + 1;
                    *inner = Inner {
                        generation,
                        ..Inner::default()
                    };
                }
                publish.send_replace(position);
            }
        });
        ProjectorHandle::from_watch(checkpoint)
    }

    async fn refresh(&self) -> Result<(), sqlx::Error> {
        let tenants: Vec<Uuid> = self
            .inner
            .lock()
            .expect("cache lock")
            .heads
            .keys()
            .copied()
            .collect();
        if tenants.is_empty() {
            return Ok(());
        }
        let mut tx = Scope::System.begin(&self.pool).await?;
        let heads = sqlx::query!(
            r#"SELECT tenant_id, max(revision) AS "revision!"
               FROM config_revisions WHERE branch = $1 AND tenant_id = ANY($2)
               GROUP BY tenant_id"#,
            self.branch,
            &tenants,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        let mut inner = self.inner.lock().expect("cache lock");
        for head in heads {
            let known = inner.heads.entry(head.tenant_id).or_default();
            if head.revision > *known {
                *known = head.revision;
            }
        }
        let Inner {
            heads,
            entries,
            entry_bytes,
            pages,
            page_bytes,
            ..
        } = &mut *inner;
        entries.retain(|key, (revision, row)| {
            let keep = heads.get(&key.0) == Some(revision);
            if !keep {
                *entry_bytes -= entry_size(key, row.as_deref());
            }
            keep
        });
        pages.retain(|key, (revision, page)| {
            let keep = heads.get(&key.0) == Some(revision);
            if !keep {
                *page_bytes -= page_size(key, page);
            }
            keep
        });
        Ok(())
    }

    /// The current resource `name` of `kind` (`None` when it does not exist).
    pub async fn get(
        &self,
        tenant_id: Uuid,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Option<Arc<ResourceRow>>, sqlx::Error> {
        let key = (tenant_id, kind, name.to_owned());
        let generation = {
            let mut inner = self.inner.lock().expect("cache lock");
            if let (Some(head), Some((revision, row))) =
                (inner.heads.get(&tenant_id), inner.entries.get(&key))
            {
                if head == revision {
                    return Ok(row.clone());
                }
            }
            // Known before the read, so a refresh that runs meanwhile reads this tenant's head
            // and discards what this read may bring back from before a commit.
            inner.heads.entry(tenant_id).or_default();
            inner.generation
        };
        let mut tx = Scope::Tenant(tenant_id).begin(&self.pool).await?;
        let found = sqlx::query!(
            r#"SELECT (SELECT coalesce(max(revision), 0) FROM config_revisions
                       WHERE tenant_id = $1 AND branch = $2) AS "head!",
                      r.kind AS "kind?", r.name AS "name?", r.document AS "document?",
                      r.version AS "version?", r.updated_at AS "updated_at?", r.updated_by AS "updated_by?"
               FROM (SELECT 1) AS one
               LEFT JOIN config_resources r
                 ON r.tenant_id = $1 AND r.branch = $2 AND r.kind = $3 AND r.name = $4"#,
            tenant_id,
            self.branch,
            kind.to_string(),
            name,
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let row = match (
            found.kind,
            found.name,
            found.document,
            found.version,
            found.updated_at,
            found.updated_by,
        ) {
            (
                Some(_),
                Some(name),
                Some(document),
                Some(version),
                Some(updated_at),
                Some(updated_by),
            ) => Some(Arc::new(ResourceRow {
                kind,
                name,
                document,
                version,
                updated_at,
                updated_by,
            })),
            _ => None,
        };
        let mut inner = self.inner.lock().expect("cache lock");
        if inner.generation != generation {
            return Ok(row);
        }
        let size = entry_size(&key, row.as_deref());
        if inner.entries.len() >= MAX_ENTRIES || inner.entry_bytes + size > MAX_ENTRY_BYTES {
            inner.entries.clear();
            inner.entry_bytes = 0;
        }
        let head = inner.heads.entry(tenant_id).or_default();
        if found.head > *head {
            *head = found.head;
        }
        inner.entry_bytes += size;
        if let Some((_, replaced)) = inner.entries.insert(key.clone(), (found.head, row.clone())) {
            inner.entry_bytes -= entry_size(&key, replaced.as_deref());
        }
        Ok(row)
    }

    /// A page rendered by `render` (a list), cached under `key` for the tenant while its head
    /// revision stays.
    ///
    /// The head is read before `render` reads the data, so the page is at least as new as the
    /// revision it is kept under: a later change of the head only ever discards it.
    pub async fn page<E, F, Fut>(
        &self,
        tenant_id: Uuid,
        key: String,
        render: F,
    ) -> Result<Arc<str>, E>
    where
        E: From<sqlx::Error>,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
    {
        let key = (tenant_id, key);
        let generation = {
            let mut inner = self.inner.lock().expect("cache lock");
            if let (Some(head), Some((revision, page))) =
                (inner.heads.get(&tenant_id), inner.pages.get(&key))
            {
                if head == revision {
                    return Ok(page.clone());
                }
            }
            inner.heads.entry(tenant_id).or_default();
            inner.generation
        };
        let head = crate::config::head_revision(&self.pool, tenant_id, self.branch).await?;
        let page: Arc<str> = Arc::from(render().await?);
        let mut inner = self.inner.lock().expect("cache lock");
        if inner.generation != generation {
            return Ok(page);
        }
        let size = page_size(&key, &page);
        if inner.pages.len() >= MAX_ENTRIES || inner.page_bytes + size > MAX_PAGE_BYTES {
            inner.pages.clear();
            inner.page_bytes = 0;
        }
        inner.page_bytes += size;
        let known = inner.heads.entry(tenant_id).or_default();
        if head > *known {
            *known = head;
        }
        if let Some((_, replaced)) = inner.pages.insert(key.clone(), (head, page.clone())) {
            inner.page_bytes -= page_size(&key, &replaced);
        }
        Ok(page)
    }
}
