//! The fleet agent: one per VM, it reads the local Docker engine and the host it runs on.
//!
//! Docker side, through the Docker Engine API (`bollard`, version negotiated with the engine):
//! - [`inventory`]: the containers that run Envoy (label [`inventory::NODE_ID_LABEL`], or an image
//!   the VM is told to watch), listed and inspected into [`inventory::Container`];
//! - [`stats`]: a container's CPU and memory from one stats sample, on cgroup v1 and v2;
//! - [`events`]: lifecycle events (create, start, restart, die, oom, kill, stop, destroy,
//!   health_status) parsed and deduplicated;
//! - [`feed`]: the long-running reader joining them: a snapshot at every (re)connection, then the
//!   events since the last one seen, reconnecting with backoff when the engine goes away.
//!
//! Proxy side: [`config_dump`] reads what each launched proxy holds from its admin listener.
//!
//! Host side, from `/proc` and `statvfs`: [`host::facts`] (what the VM is) and [`host::usage`]
//! (how busy it is).
//!
//! Link to the control plane: [`report`] turns every observation into the fleet protocol's
//! messages (`efms-fleet-proto`), [`link`] keeps one stream to the control plane open, reporting
//! through it and sending again what the server has not stored (docs/adr/0011-fleet-agent.md).
#![forbid(unsafe_code)]

pub mod config_dump;
pub mod engine;
pub mod events;
pub mod feed;
pub mod host;
pub mod inventory;
pub mod link;
pub mod operate;
pub mod probe;
pub mod report;
pub mod stats;
mod time;

pub use engine::{Engine, EngineError};
