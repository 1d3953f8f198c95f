//! How a VM decides on operations on its containers.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{Vm, VmError, VmEvent};
use crate::fleet::operations::{free_node_id, ContainerOperation, OperationOutcome};
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
        if self.operations.contains_key(&operation_id) {
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
            }
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
        if self.operations.contains_key(&operation_id) {
            vec![VmEvent::OperationFinished {
                operation_id,
                outcome,
            }]
        } else {
            // Finished before (a resent report, or failed when the VM went down).
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
            })
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
