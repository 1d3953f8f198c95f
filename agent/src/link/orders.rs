//! The control plane's orders on the VM's containers: each carried out once per agent process
//! (the server sends a pending one again after every reconnection) and its outcome reported
//! through the outbox like any report, so that it reaches the server even across a reconnection.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use efms_fleet_proto::agent_message::Body;
use efms_fleet_proto::{Order, OrderDone};

use super::outbox::Outbox;
use crate::engine::Engine;
use crate::operate::carry_out;

/// How many order ids an agent remembers as taken.
const REMEMBERED_ORDERS: usize = 4_096;

/// Orders taken by this process.
pub(crate) struct Orders {
    docker_host: Option<String>,
    state_dir: PathBuf,
    outbox: Arc<Outbox>,
    taken: Mutex<Taken>,
}

#[derive(Default)]
struct Taken {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Orders {
    /// Orders carried out on the engine at `docker_host`, bootstraps kept under `state_dir`,
    /// outcomes reported through `outbox`.
    pub(crate) fn new(
        docker_host: Option<String>,
        state_dir: PathBuf,
        outbox: Arc<Outbox>,
    ) -> Self {
        Self {
            docker_host,
            state_dir,
            outbox,
            taken: Mutex::default(),
        }
    }

    /// Carries out `order` in the background unless this process took it before (its outcome
    /// is then reported or on its way).
    pub(crate) fn accept(self: &Arc<Self>, order: Order) {
        let Order {
            operation_id,
            action,
        } = order;
        {
            let mut taken = self.taken.lock().expect("orders lock");
            if !taken.ids.insert(operation_id.clone()) {
                return;
            }
            taken.order.push_back(operation_id.clone());
            if taken.order.len() > REMEMBERED_ORDERS {
                if let Some(oldest) = taken.order.pop_front() {
                    taken.ids.remove(&oldest);
                }
            }
        }
        let orders = self.clone();
        tokio::spawn(async move {
            let outcome = match action {
                None => Err("the order names no action".to_owned()),
                Some(action) => match Engine::connect(orders.docker_host.as_deref()).await {
                    Ok(engine) => {
                        carry_out(&engine, &orders.state_dir, &operation_id, action).await
                    }
                    Err(error) => Err(error.to_string()),
                },
            };
            let done = match outcome {
                Ok(carried) => {
                    tracing::info!(operation = %operation_id, container = %carried.container_id,
                        envoy = %carried.envoy_version, "order carried out");
                    OrderDone {
                        operation_id,
                        container_id: carried.container_id,
                        error: String::new(),
                        image_id: carried.image_id,
                        envoy_version: carried.envoy_version,
                    }
                }
                Err(error) => {
                    tracing::warn!(operation = %operation_id, %error, "order failed");
                    OrderDone {
                        operation_id,
                        error,
                        ..OrderDone::default()
                    }
                }
            };
            orders.outbox.push(Body::Done(done));
        });
    }
}
