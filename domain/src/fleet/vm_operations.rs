//! How a VM decides on operations on its containers.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{Vm, VmError, VmEvent};
use crate::fleet::operations::{
    free_node_id, ContainerOperation, OperationOutcome, ADMIN_PORT_LABEL, FIRST_ADMIN_PORT,
};
use crate::fleet::VmState;

/// An operation not finished yet: what, and who asked.
pub type Pending<'a> = (Uuid, &'a ContainerOperation, &'a str);

impl Vm {
    /// The operations asked for and not finished, oldest first (ids are time-ordered).
    pub fn pending_operations(&self) -> impl Iterator<Item = Pending<'_>> {
        self.operations
            .iter()
            .map(|(id, (operation, by))| (*id, operation, by.as_str()))
    }

    pub(super) fn operate(
        &self,
        operation_id: Uuid,
        mut operation: ContainerOperation,
        requested_by: String,
    ) -> Result<Vec<VmEvent>, VmError> {
        if self.state != VmState::Ready {
            return Err(VmError::NotReady(self.state));
        }
        // Asked before: pending, or finished lately (a retry of a request already carried out).
        if self.operations.contains_key(&operation_id) || self.finished.contains(&operation_id) {
            return Ok(vec![]);
        }
        match &mut operation {
            ContainerOperation::Launch { node_id, spec } => {
                let taken = self.node_ids();
                if node_id.is_empty() {
                    let vm = self.name.as_ref().map_or("", |name| name.as_str());
                    *node_id = free_node_id(vm, &spec.group, &taken);
                } else if taken.contains(node_id.as_str()) {
                    return Err(VmError::NodeIdTaken(node_id.clone()));
                }
                let ports = self.admin_ports();
                if spec.admin_port == 0 {
                    spec.admin_port = (FIRST_ADMIN_PORT..=u16::MAX)
                        .find(|port| !ports.contains(port))
                        .ok_or(VmError::AdminPortTaken(0))?;
                } else if ports.contains(&spec.admin_port) {
                    return Err(VmError::AdminPortTaken(spec.admin_port));
                }
            }
            ContainerOperation::Probe { .. } => {}
            other => {
                let id = other.container_id().unwrap_or_default();
                if !self.containers.contains_key(id) {
                    return Err(VmError::UnknownContainer(id.to_owned()));
                }
            }
        }
        Ok(vec![VmEvent::OperationRequested {
            operation_id,
            operation,
            requested_by,
        }])
    }

    pub(super) fn finish(&self, operation_id: Uuid, outcome: OperationOutcome) -> Vec<VmEvent> {
        // Pending, or failed when the VM went down while the agent still carried it out.
        if self.operations.contains_key(&operation_id) || self.abandoned.contains(&operation_id) {
            vec![VmEvent::OperationFinished {
                operation_id,
                outcome,
                abandoned: false,
            }]
        } else {
            // Finished before: a resent report.
            vec![]
        }
    }

    /// Fails every pending operation: the agent will not report them (`why`).
    pub(super) fn abandon(&self, why: &str) -> Vec<VmEvent> {
        self.operations
            .keys()
            .map(|operation_id| VmEvent::OperationFinished {
                operation_id: *operation_id,
                outcome: OperationOutcome::Failed { error: why.into() },
                abandoned: true,
            })
            .collect()
    }

    /// The admin ports its launched containers (label `efms.admin_port`) and pending launches
    /// hold on the host's network.
    fn admin_ports(&self) -> BTreeSet<u16> {
        let launching = self
            .operations
            .values()
            .filter_map(|(operation, _)| match operation {
                ContainerOperation::Launch { spec, .. } => Some(spec.admin_port),
                _ => None,
            });
        self.containers
            .values()
            .filter_map(|container| container.labels.get(ADMIN_PORT_LABEL)?.parse().ok())
            .chain(launching)
            .collect()
    }

    /// The node ids its containers are and its pending launches will be.
    fn node_ids(&self) -> BTreeSet<&str> {
        let launching = self
            .operations
            .values()
            .filter_map(|(operation, _)| match operation {
                ContainerOperation::Launch { node_id, .. } => Some(node_id.as_str()),
                _ => None,
            });
        self.containers
            .values()
            .filter_map(|container| container.node_id.as_deref())
            .chain(launching)
            .collect()
    }
}
