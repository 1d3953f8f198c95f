//! The fleet's events of the log as feed events: `vm.state` (a VM's state changed, or it was
//! removed), `container.lifecycle` (a container's lifecycle event, or its disappearance),
//! `job.finished` (a container operation ended) and `rollout.progress` (every step of a
//! rollout).

use efms_domain::fleet::rollout::RolloutEvent;
use efms_domain::fleet::VmEvent;
use serde_json::{json, Value};

use super::LogRow;

/// The log's event types the fleet's feed events come from, by aggregate.
pub(super) const VM_EVENT_TYPES: [&str; 5] = [
    "VmStateChanged",
    "VmRemoved",
    "ContainerLifecycle",
    "ContainerGone",
    "ContainerOperationFinished",
];

/// The feed event a VM's event of the log is: its type and payload.
pub(super) fn vm_event(row: &LogRow) -> Option<(&'static str, Value)> {
    let vm = &row.aggregate_id;
    let event = serde_json::from_value::<VmEvent>(row.payload.clone()).ok()?;
    Some(match event {
        VmEvent::StateChanged { from, to, reason } => (
            "vm.state",
            json!({ "vm": vm, "from": from, "to": to, "reason": reason }),
        ),
        VmEvent::Removed => (
            "vm.state",
            json!({ "vm": vm, "to": "removed", "reason": format!("removed by {}", row.actor) }),
        ),
        VmEvent::ContainerLifecycle { event } => (
            "container.lifecycle",
            json!({
                "vm": vm,
                "container_id": event.container_id,
                "name": event.name,
                "image": event.image,
                "node_id": event.node_id,
                "action": event.kind,
                "exit_code": event.exit_code,
                "signal": event.signal,
                "health": event.health,
                "at": event.at(),
            }),
        ),
        VmEvent::ContainerGone {
            container_id,
            reason,
        } => (
            "container.lifecycle",
            json!({ "vm": vm, "container_id": container_id, "action": "gone", "reason": reason }),
        ),
        VmEvent::OperationFinished {
            operation_id,
            outcome,
            abandoned,
        } => (
            "job.finished",
            json!({
                "job_id": operation_id,
                "kind": "container_operation",
                "vm": vm,
                "outcome": outcome,
                "abandoned": abandoned,
            }),
        ),
        _ => return None,
    })
}

/// The `rollout.progress` event a rollout's event of the log is.
pub(super) fn rollout_event(row: &LogRow) -> Option<(&'static str, Value)> {
    let event = serde_json::from_value::<RolloutEvent>(row.payload.clone()).ok()?;
    Some((
        "rollout.progress",
        json!({
            "rollout": row.aggregate_id,
            "step": row.event_type.trim_start_matches("Rollout").to_lowercase(),
            "actor": row.actor,
            "details": event,
        }),
    ))
}
