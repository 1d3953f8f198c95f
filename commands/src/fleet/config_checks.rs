//! What the agents find in their proxies' `config_dump`s (NFR-OB-004): each proxy's dumps are
//! compared with what the control plane recorded it as accepting, and the verdict goes on the
//! proxy's row (`config_checked_at`, `config_diverged` and since when), where its drift state reads
//! it. Verdicts are state, not history: the proxy's status rows are not event-sourced either.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use efms_domain::fleet::config_check::{verdict, Accepted, ConfigCheck, Verdict};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Scope;

/// Compares the dumps of `tenant_id`'s proxies read at `read_at` (never later than now) with what
/// each accepted (`empty_set`: the version of a set without resources), and records each decided
/// verdict. Dumps of nodes the tenant has no proxy of are ignored. Returns how many proxies were
/// found diverged.
pub async fn record_config_checks(
    pool: &PgPool,
    tenant_id: Uuid,
    read_at: DateTime<Utc>,
    checks: &[ConfigCheck],
    empty_set: &str,
) -> Result<usize, sqlx::Error> {
    let read_at = read_at.min(Utc::now());
    let mut by_node: BTreeMap<&str, Vec<&ConfigCheck>> = BTreeMap::new();
    for check in checks {
        by_node
            .entry(check.node_id.as_str())
            .or_default()
            .push(check);
    }
    let nodes: Vec<String> = by_node.keys().map(|node| (*node).to_owned()).collect();
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT node_id, type_url, acked_version AS "version!", acked_at AS "at!"
           FROM proxy_resource_status
           WHERE tenant_id = $1 AND node_id = ANY($2)
             AND acked_version IS NOT NULL AND acked_at IS NOT NULL"#,
        tenant_id,
        &nodes,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut accepted: BTreeMap<String, Vec<Accepted>> = BTreeMap::new();
    for row in rows {
        accepted.entry(row.node_id).or_default().push(Accepted {
            type_url: row.type_url,
            version: row.version,
            at: row.at,
        });
    }
    let mut decided_nodes = Vec::new();
    let mut reasons: Vec<Option<String>> = Vec::new();
    for (node, checks) in &by_node {
        let of_node = accepted.get(*node).map_or(&[][..], Vec::as_slice);
        match verdict(checks, of_node, read_at, empty_set) {
            Verdict::Undecided => continue,
            Verdict::Agrees => reasons.push(None),
            Verdict::Diverges(why) => reasons.push(Some(why)),
        }
        decided_nodes.push((*node).to_owned());
    }
    sqlx::query!(
        r#"UPDATE proxies p
           SET config_checked_at = $4,
               config_diverged = u.why,
               config_diverged_since = CASE WHEN u.why IS NULL THEN NULL
                                            ELSE coalesce(p.config_diverged_since, $4) END
           FROM UNNEST($2::text[], $3::text[]) AS u(node, why)
           WHERE p.tenant_id = $1 AND p.node_id = u.node"#,
        tenant_id,
        &decided_nodes,
        &reasons as &[Option<String>],
        read_at,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reasons.iter().filter(|why| why.is_some()).count())
}
