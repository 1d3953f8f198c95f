//! The `request_audit` table: the API's audit trail of writes and refused requests.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use sqlx::PgPool;
use uuid::Uuid;

/// What the trail keeps of one request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The tenant the route names or the caller belongs to.
    pub tenant_id: Option<Uuid>,
    /// Who asked (`anonymous` without a valid token).
    pub actor: String,
    /// The caller's role.
    pub role: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The route template.
    pub route: String,
    /// The path asked for.
    pub path: String,
    /// The answer's status.
    pub status: i16,
    /// Where the request came from.
    pub client_addr: Option<std::net::IpAddr>,
    /// The client's request id.
    pub request_id: Option<String>,
}

/// Records one request.
pub async fn insert(pool: &PgPool, entry: Entry) -> Result<(), sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    sqlx::query!(
        r#"INSERT INTO request_audit (tenant_id, actor, role, method, route, path, status,
                                      client_addr, request_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::inet, $9)"#,
        entry.tenant_id,
        entry.actor,
        entry.role,
        entry.method,
        entry.route,
        entry.path,
        entry.status,
        entry.client_addr.map(|ip| ip.to_string()),
        entry.request_id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Which requests of a tenant's trail to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this method (upper case).
    pub method: Option<String>,
    /// Only paths that contain this.
    pub path_contains: Option<String>,
    /// Only statuses in this range.
    pub status: (i16, i16),
    /// Only 401 and 403.
    pub denied_only: bool,
    /// Anything but 401 and 403.
    pub failed_only: bool,
    /// Not before this time.
    pub from: Option<DateTime<Utc>>,
    /// Before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only entries older than this one (the previous page's cursor).
    pub before: Option<i64>,
    /// How many rows to fetch.
    pub limit: i64,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Its id (the trail's order).
    pub audit_id: i64,
    /// When it was answered.
    pub recorded_at: DateTime<Utc>,
    /// Who asked.
    pub actor: String,
    /// The caller's role.
    pub role: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The route template.
    pub route: String,
    /// The path asked for.
    pub path: String,
    /// The answer's status.
    pub status: i16,
    /// Where the request came from.
    pub client: Option<String>,
    /// The client's request id.
    pub request_id: Option<String>,
}

/// A tenant's trail, newest first.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    filter: Filter,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT audit_id, recorded_at, actor, role, method, route, path, status,
                  host(client_addr) AS client, request_id
           FROM request_audit
           WHERE tenant_id = $1
             AND ($2::text IS NULL OR actor = $2)
             AND ($3::text IS NULL OR method = $3)
             AND ($4::text IS NULL OR strpos(path, $4) > 0)
             AND status BETWEEN $5 AND $6
             AND (NOT $7 OR status IN (401, 403))
             AND (NOT $8 OR status NOT IN (401, 403))
             AND ($9::timestamptz IS NULL OR recorded_at >= $9)
             AND ($10::timestamptz IS NULL OR recorded_at < $10)
             AND ($11::bigint IS NULL OR audit_id < $11)
           ORDER BY audit_id DESC LIMIT $12"#,
        tenant_id,
        filter.actor,
        filter.method,
        filter.path_contains,
        filter.status.0,
        filter.status.1,
        filter.denied_only,
        filter.failed_only,
        filter.from,
        filter.to,
        filter.before,
        filter.limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| AuditRow {
            audit_id: row.audit_id,
            recorded_at: row.recorded_at,
            actor: row.actor,
            role: row.role,
            method: row.method,
            route: row.route,
            path: row.path,
            status: row.status,
            client: row.client,
            request_id: row.request_id,
        })
        .collect())
}
