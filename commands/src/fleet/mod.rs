//! The fleet's write side (ADR 0011): registering, re-keying and removing VMs (the API), and
//! what the agents' streams store (their reports and presence).
//!
//! A VM's history goes to its stream in the log through the [`CommandBus`]; its join tokens (their
//! digests) to `vm_join_tokens` ([`tokens`]); what is not history (heartbeats, utilisation, where
//! an agent's reports stand) to `vm_presence` and the sample tables ([`presence`]).

pub mod config_checks;
pub mod operations;
pub mod presence;
pub mod presence_writer;
pub mod record_queue;
pub mod rollouts;
pub mod rollups;
pub mod tokens;
pub mod upkeep;

use std::time::Duration;

use cqrs_es::Aggregate as _;
use efms_domain::fleet::{JoinToken, Vm, VmCommand, VmError, VmName, VmPlacement};
use sqlx::PgPool;
use uuid::Uuid;

use crate::event_store::persistence_error;
use crate::{CommandBus, CommandError, CommitMetadata, Position};

/// How long the replica's writers of agents' reports (lifecycle events, presence and samples)
/// let reports gather after the first one of a transaction: a thousand agents then cost a few
/// dozen transactions a second, each report waiting this long at most before its write starts.
pub const GATHER_FOR: Duration = Duration::from_millis(50);

/// Takes what waits in `receiver` into `taken` (up to `most`), then what arrives within
/// [`GATHER_FOR`] of that; `false` once the channel is closed and empty.
async fn gather<T>(
    receiver: &mut tokio::sync::mpsc::Receiver<T>,
    taken: &mut Vec<T>,
    most: usize,
) -> bool {
    if receiver.recv_many(taken, most).await == 0 {
        return false;
    }
    let deadline = tokio::time::Instant::now() + GATHER_FOR;
    while taken.len() < most {
        let room = most - taken.len();
        match tokio::time::timeout_at(deadline, receiver.recv_many(taken, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    true
}

/// Why a fleet write did not happen.
pub type FleetError = CommandError<VmError>;

/// A database failure outside the log, as a fleet error.
fn storage(error: sqlx::Error) -> FleetError {
    persistence_error(error).into()
}

/// A failure to store a join token: a concurrent issue of another one won (the unique index of
/// live tokens), or the database failed.
fn token_storage(error: sqlx::Error) -> FleetError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            CommandError::Conflict
        }
        _ => storage(error),
    }
}

/// The fleet's writes.
#[derive(Debug, Clone)]
pub struct Fleet {
    pool: PgPool,
    bus: CommandBus,
    records: record_queue::RecordQueue,
    presence: presence_writer::PresenceWriter,
}

impl Fleet {
    /// Writes through `bus`, tokens and presence to `pool`; starts the writers of agents'
    /// lifecycle events (see [`record_queue`]) and of their presence and samples (see
    /// [`presence_writer`]).
    pub fn new(pool: PgPool, bus: CommandBus) -> Self {
        let records = record_queue::RecordQueue::spawn(bus.clone());
        let presence = presence_writer::PresenceWriter::spawn(pool.clone());
        Self {
            pool,
            bus,
            records,
            presence,
        }
    }

    /// The writer of agents' presence and samples.
    pub fn presence(&self) -> &presence_writer::PresenceWriter {
        &self.presence
    }

    /// Runs `command`, which the agent of the VM `name` of `tenant_id` reported, in a commit
    /// shared with other VMs' reports waiting at the same time ([`record_queue`]).
    pub async fn report(
        &self,
        tenant_id: Uuid,
        name: &str,
        command: VmCommand,
    ) -> Result<Option<Position>, FleetError> {
        self.records.execute(tenant_id, name, command, name).await
    }

    /// The pool it writes to.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `command` on the VM `name` of `tenant_id` on behalf of `actor`.
    pub async fn execute(
        &self,
        tenant_id: Uuid,
        name: &str,
        command: VmCommand,
        actor: &str,
    ) -> Result<Option<Position>, FleetError> {
        self.bus
            .execute::<Vm>(tenant_id, name, command, (), CommitMetadata::by(actor))
            .await
    }

    /// Registers a VM; answers its first join token, which is shown only now.
    pub async fn register(
        &self,
        tenant_id: Uuid,
        name: VmName,
        placement: VmPlacement,
        actor: &str,
    ) -> Result<(JoinToken, Option<Position>), FleetError> {
        let token = JoinToken::generate();
        let token_id = Uuid::new_v4();
        let vm = name.as_str().to_owned();
        let command = VmCommand::Register {
            name,
            placement,
            token_id,
        };
        let position = self.execute(tenant_id, &vm, command, actor).await?;
        tokens::replace(&self.pool, tenant_id, &vm, token_id, &token, actor)
            .await
            .map_err(storage)?;
        Ok((token, position))
    }

    /// Issues a new join token for a VM and revokes the one before it.
    pub async fn issue_token(
        &self,
        tenant_id: Uuid,
        name: &VmName,
        actor: &str,
    ) -> Result<(JoinToken, Option<Position>), FleetError> {
        let token = JoinToken::generate();
        let token_id = Uuid::new_v4();
        let command = VmCommand::IssueToken { token_id };
        let position = self
            .execute(tenant_id, name.as_str(), command, actor)
            .await?;
        tokens::replace(
            &self.pool,
            tenant_id,
            name.as_str(),
            token_id,
            &token,
            actor,
        )
        .await
        .map_err(token_storage)?;
        Ok((token, position))
    }

    /// Removes a VM: its token is revoked (its stream ends at the next check), its history kept.
    pub async fn remove(
        &self,
        tenant_id: Uuid,
        name: &VmName,
        actor: &str,
    ) -> Result<Option<Position>, FleetError> {
        let position = self
            .execute(tenant_id, name.as_str(), VmCommand::Remove, actor)
            .await?;
        tokens::revoke(&self.pool, tenant_id, name.as_str(), actor)
            .await
            .map_err(storage)?;
        Ok(position)
    }

    /// Takes down every VM whose last heartbeat is older than `silence` (interval and grace):
    /// one command each, so a VM that reported meanwhile, or that another replica took down
    /// first, is left as it is. Answers how many changed.
    pub async fn sweep(&self, silence: Duration) -> Result<usize, FleetError> {
        let overdue = presence::overdue(&self.pool, silence)
            .await
            .map_err(storage)?;
        let mut changed = 0;
        for vm in overdue {
            // It may have reported since the list was read: then it is left as it is.
            let now = presence::last_heartbeat(&self.pool, vm.tenant_id, &vm.name)
                .await
                .map_err(storage)?;
            if now != vm.last_heartbeat_at {
                continue;
            }
            let reason = match vm.last_heartbeat_at {
                Some(at) => format!(
                    "no heartbeat since {}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => "no heartbeat".to_owned(),
            };
            let command = VmCommand::Silence { reason };
            match self
                .execute(vm.tenant_id, &vm.name, command, Vm::TYPE)
                .await
            {
                Ok(Some(_)) => changed += 1,
                Ok(None) | Err(CommandError::Rejected(_) | CommandError::Conflict) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(changed)
    }
}
