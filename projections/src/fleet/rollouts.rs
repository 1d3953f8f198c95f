//! The rollouts' read model (`rollouts`): each rollout as its stream folds to, kept by
//! [`RolloutProjection`] with the aggregate's own rule of applying its events; and its reads.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate as _;
use efms_commands::{RecordedEvent, Scope};
use efms_domain::fleet::rollout::{Rollout, RolloutEvent};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projector::{payload_of, Projection, ProjectionError};

/// Keeps `rollouts` from the rollout streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct RolloutProjection;

impl Projection for RolloutProjection {
    const NAME: &'static str = "rollouts";
    const AGGREGATE_TYPE: &'static str = Rollout::TYPE;
    const TABLES: &'static [&'static str] = &["rollouts"];
    type Replaying = ();

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let Some(payload) = payload_of::<RolloutEvent>(event, Rollout::TYPE)? else {
            return Ok(());
        };
        let Ok(rollout_id) = event.aggregate_id.parse::<Uuid>() else {
            return Ok(());
        };
        let before = sqlx::query_scalar!(
            r#"SELECT document AS "document: Json<Rollout>" FROM rollouts
               WHERE tenant_id = $1 AND rollout_id = $2"#,
            event.tenant_id,
            rollout_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let mut rollout = before.map(|json| json.0).unwrap_or_default();
        rollout.apply(payload);
        let (Some(spec), Some(state)) = (rollout.spec(), rollout.state()) else {
            return Ok(());
        };
        sqlx::query!(
            r#"INSERT INTO rollouts (tenant_id, rollout_id, group_name, image, state, requested_by,
                   started_at, updated_at, document, version, settling)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10)
               ON CONFLICT (tenant_id, rollout_id) DO UPDATE SET
                   state = excluded.state, updated_at = excluded.updated_at,
                   document = excluded.document, version = excluded.version,
                   settling = excluded.settling"#,
            event.tenant_id,
            rollout_id,
            spec.group,
            spec.image,
            state.as_str(),
            rollout.requested_by(),
            event.recorded_at,
            serde_json::to_value(&rollout)?,
            event.sequence,
            state.ended() && rollout.settling(),
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query!("DELETE FROM rollouts")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn reset_tenant(
        &self,
        tx: &mut PgConnection,
        tenant_id: Uuid,
    ) -> Result<(), ProjectionError> {
        sqlx::query!("DELETE FROM rollouts WHERE tenant_id = $1", tenant_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// A rollout as the read model has it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    /// Its id.
    pub rollout_id: Uuid,
    /// The rollout itself.
    pub rollout: Rollout,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One rollout of the tenant.
pub async fn get_rollout(
    pool: &PgPool,
    tenant_id: Uuid,
    rollout_id: Uuid,
) -> Result<Option<RolloutRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query!(
        r#"SELECT rollout_id, document AS "document: Json<Rollout>", started_at, updated_at
           FROM rollouts WHERE tenant_id = $1 AND rollout_id = $2"#,
        tenant_id,
        rollout_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|row| RolloutRow {
        rollout_id: row.rollout_id,
        rollout: row.document.0,
        started_at: row.started_at,
        updated_at: row.updated_at,
    }))
}

/// The group's rollout that is running or paused, if there is one.
pub async fn active_of_group(
    pool: &PgPool,
    tenant_id: Uuid,
    group: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let id = sqlx::query_scalar!(
        r#"SELECT rollout_id FROM rollouts
           WHERE tenant_id = $1 AND group_name = $2 AND state IN ('running', 'paused')
           LIMIT 1"#,
        tenant_id,
        group,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Every tenant's rollouts that are running or paused (a paused one finishes what is under way),
/// or ended with a container being removed, oldest first: those the driver moves on (those of a
/// suspended or deleted tenant wait).
pub async fn running(pool: &PgPool) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT r.tenant_id, r.rollout_id FROM rollouts r
           WHERE (r.state IN ('running', 'paused') OR r.settling)
             AND NOT EXISTS (SELECT 1 FROM tenants t
                             WHERE t.tenant_id = r.tenant_id
                               AND (t.suspended_at IS NOT NULL OR t.deleted_at IS NOT NULL))
           ORDER BY r.started_at"#
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.tenant_id, row.rollout_id))
        .collect())
}
