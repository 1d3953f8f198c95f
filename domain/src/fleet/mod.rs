//! The fleet (FR-VM-001…005, FR-DC-001…005): the VMs an agent reports from, and the Envoy
//! containers on them.
//!
//! A VM is an aggregate: its stream (aggregate type `vm`, id its name) holds its registration,
//! labels, facts, join tokens, state changes and its containers' history, so "which containers
//! ran on VM X, in which state, at T" is answered from the log like configuration is. Utilisation
//! samples are not events: they go to tables of their own (see [`reports`]).

pub mod config_check;
pub mod join_token;
mod model;
pub mod operations;
pub mod reports;
pub mod rollout;
mod state;
mod vm;
mod vm_values;

pub use join_token::JoinToken;
pub use model::{
    Container, ContainerState, Disk, EngineVersion, EventKind, Health, HostFacts, InterfaceAddress,
    LifecycleEvent, Limits, Port,
};
pub use operations::{ContainerOperation, LaunchSpec, OperationOutcome};
pub use state::{VmState, DEFAULT_HEARTBEAT_GRACE, DEFAULT_HEARTBEAT_INTERVAL};
pub use vm::{
    check_image, check_label, Vm, VmCommand, VmError, VmEvent, VmName, VmPlacement,
    MAX_WATCHED_IMAGES,
};
