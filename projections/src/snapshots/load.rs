//! The load side of the xDS snapshots: reading a tenant's branch content, head revisions and
//! grants from the read models, and opening sealed secret material with the tenant's data keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use efms_commands::{Keyring, Scope};
use efms_domain::config::group::GroupSpec;
use efms_domain::config::references;
use efms_domain::envoy::{self, ResourceKind};
use efms_domain::secrets;
use sqlx::PgPool;
use uuid::Uuid;

use super::model::{Content, ContentChange, Grant, Stored, XdsResource, MAIN_BRANCH};

/// The head revision of every branch of `tenant_ids`.
pub(super) async fn heads_of(
    pool: &PgPool,
    tenant_ids: &[Uuid],
) -> Result<HashMap<(Uuid, String), u64>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let heads = sqlx::query!(
        r#"SELECT tenant_id, branch, max(revision) AS "revision!"
               FROM config_revisions WHERE tenant_id = ANY($1)
               GROUP BY tenant_id, branch"#,
        tenant_ids,
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
    Ok(heads)
}

/// The clusters shared with each of `tenant_ids`, in a stable order.
pub(super) async fn grants_of(
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

/// What differs between `state` and the head revision of the tenant's `branch`: one consistent
/// read of the resource list (for `main` read before, only of the resources changed since), then
/// the documents of the resources whose hash changed. `state` is
/// only read: the caller applies the change ([`Content::apply`]) where and when it chooses. `None`
/// when the branch is not live (`main` always is; a deleted or unknown branch loads nothing).
#[allow(clippy::too_many_lines)]
pub(super) async fn load(
    (pool, keyring): (&PgPool, &Keyring),
    tenant_id: Uuid,
    branch: &str,
    state: &Content,
) -> Result<Option<ContentChange>, sqlx::Error> {
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
            return Ok(None);
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
    // `main` read before at an earlier revision: only what changed since (every change of a
    // resource, deletions included, starts a version). Otherwise, and now and then to put right
    // what a replay corrected, the whole list.
    let since = (branch == MAIN_BRANCH
        && revision >= state.revision_i64()
        && !state.relist
        && state
            .listed_at
            .is_some_and(|at| at.elapsed() < WHOLE_LIST_EVERY))
    .then(|| state.revision_i64());
    let listed = match since {
        Some(since) => changed_since(&mut tx, tenant_id, since).await?,
        None => whole_list(&mut tx, tenant_id, branch).await?,
    };
    let mut live: HashMap<(ResourceKind, String), String> = HashMap::with_capacity(listed.len());
    let mut gone = Vec::new();
    for (kind, name, hash) in listed {
        let Ok(kind) = serde_json::from_value::<ResourceKind>(serde_json::Value::String(kind))
        else {
            continue;
        };
        match hash {
            Some(hash) => {
                live.insert((kind, name), hash);
            }
            None => gone.push((kind, name)),
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

    let mut change = ContentChange {
        revision: u64::try_from(revision).unwrap_or_default(),
        whole: since.is_none(),
        ..ContentChange::default()
    };
    if since.is_some() {
        for (kind, name) in gone {
            if kind == ResourceKind::Group {
                if state.groups.contains_key(&name) {
                    change.groups.push((name, None));
                }
            } else if state.resources.contains_key(&(kind, name.clone())) {
                change.resources.push(((kind, name), None));
            }
        }
    } else {
        change.resources.extend(
            state
                .resources
                .keys()
                .filter(|key| !live.contains_key(*key))
                .map(|key| (key.clone(), None)),
        );
        change.groups.extend(
            state
                .groups
                .keys()
                .filter(|name| !group_hashes.contains_key(*name))
                .map(|name| (name.clone(), None)),
        );
    }
    for row in documents {
        let Ok(kind) = serde_json::from_value::<ResourceKind>(serde_json::Value::String(row.kind))
        else {
            continue;
        };
        if kind == ResourceKind::Group {
            match serde_json::from_value::<GroupSpec>(row.document) {
                Ok(spec) => {
                    change.groups.push((row.name, Some((row.hash, spec))));
                }
                Err(error) => {
                    tracing::error!(group = row.name, %error, "a stored group does not decode");
                    change.skipped = true;
                }
            }
            continue;
        }
        let mut document = row.document;
        if kind == ResourceKind::Secret {
            if let Err(error) = open_secret(keyring, tenant_id, &mut document).await {
                tracing::error!(name = row.name, %error, "a stored secret does not open; it is not served");
                change.skipped = true;
                continue;
            }
        }
        let row_document = document;
        match envoy::encode(kind, &row_document) {
            Ok(body) => {
                let refs = references(kind, &row_document);
                let document = Arc::new(row_document);
                let encoded = Arc::new(XdsResource::new(
                    kind,
                    row.name.clone(),
                    row.hash[..16.min(row.hash.len())].to_owned(),
                    &body,
                ));
                change.resources.push((
                    (kind, row.name),
                    Some(Arc::new(Stored {
                        hash: row.hash,
                        refs,
                        encoded,
                        document,
                    })),
                ));
            }
            Err(error) => {
                tracing::error!(%kind, name = row.name, %error, "a stored resource does not encode");
                change.skipped = true;
            }
        }
    }
    Ok(Some(change))
}

/// How long a tenant's `main` is followed change by change before its whole list is compared
/// again (which puts right what a replay of the read models corrected meanwhile).
const WHOLE_LIST_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// A listed resource: kind, name, and its hash (`None`: it no longer exists).
type Listed = (String, String, Option<String>);

/// The resources of `main` changed after revision `since`.
async fn changed_since(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    since: i64,
) -> Result<Vec<Listed>, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT c.kind AS "kind!", c.name AS "name!", r.hash AS "hash?"
           FROM (SELECT DISTINCT kind, name FROM config_resource_versions
                 WHERE tenant_id = $1 AND branch = $2 AND valid_from > $3) AS c
           LEFT JOIN config_resources r
             ON r.tenant_id = $1 AND r.branch = $2 AND r.kind = c.kind AND r.name = c.name"#,
        tenant_id,
        MAIN_BRANCH,
        since,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.kind, row.name, row.hash))
    .collect())
}

/// Every resource of the tenant's `branch`.
async fn whole_list(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    branch: &str,
) -> Result<Vec<Listed>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT kind, name, hash FROM config_resources WHERE tenant_id = $1 AND branch = $2",
        tenant_id,
        branch,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.kind, row.name, Some(row.hash)))
    .collect())
}
