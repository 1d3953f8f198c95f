//! The write side of the Envoy Fleet Manager.
//!
//! - [`event_store`]: our implementation of cqrs-es's `PersistedEventRepository` over the partitioned
//!   `events` table: one multi-row INSERT per commit, optimistic concurrency by primary key, every
//!   event stamped with tenant, actor, event id, time and global position.
//! - [`log`]: the commit-ordered reader that projections tail; [`doorbell`]: the NOTIFY that wakes
//!   it, naming the aggregate types that were written.
//! - [`scope`]: how every transaction is bound to one tenant (or to the cross-tenant system role)
//!   so that row-level security, not handler code, keeps tenants apart.
//! - [`bus`]: executes a command on an aggregate and reports where its commit landed in the log;
//!   [`warm`] keeps the states of recently used streams in memory between commands, and
//!   [`aggregate_snapshots`] writes their snapshots off the commit's path.
//! - [`configuration`]: the configuration service, the whole pipeline of a configuration write
//!   (pins, quotas, sharing, sealing, the command, read-your-writes).
//! - [`fleet`]: the VMs' registrations, join tokens, reports and presence.
//! - [`lease`]: background work that one replica must do, claimed for a while.
//! - [`keys`]: the tenants' data keys for secret material, wrapped under the master key.
//! - [`credentials`]: whether a token's user or proxy token id was withdrawn before it expired.

pub mod aggregate_snapshots;
pub mod bus;
pub mod configuration;
pub mod credentials;
pub mod doorbell;
pub mod event_store;
pub mod fleet;
pub mod keys;
pub mod lease;
pub mod log;
pub mod scope;
pub mod telemetry;
pub mod tenant_purge;
pub mod warm;

pub use bus::{BatchCommand, BatchOutcome, CommandBus, CommandError, CommitMetadata};
pub use doorbell::{CommitBell, LogDoorbell, SharedDoorbell};
pub use event_store::PgEventRepository;
pub use keys::Keyring;
pub use log::{Position, RecordedEvent};
pub use scope::Scope;

/// The schema migrations (the `migrations/` folder), the only way the schema changes (DB-AC-003).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
