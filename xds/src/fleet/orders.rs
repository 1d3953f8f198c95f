//! Orders to agents: operations on a VM's containers asked through the API reach the stream of
//! the VM's agent, on whichever replica holds it.
//!
//! The API records the operation in the VM's stream and notifies
//! [`efms_commands::fleet::operations::ORDERS_CHANNEL`]; every replica listens, and a replica
//! holding a stream of that VM nudges it. A nudged stream (and every stream when it opens, and
//! all of them after the listening connection was lost) reads its VM's pending operations and
//! sends those it has not sent: an operation is never lost to a missed notification, and an
//! agent that reconnects is told again what is still pending (it carries out an id once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use efms_commands::fleet::operations::{parse_orders_payload, ORDERS_CHANNEL};
use futures::future::BoxFuture;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// What a launched proxy needs minted: its bootstrap, with a proxy token of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapRequest {
    /// The tenant's id.
    pub tenant_id: Uuid,
    /// The tenant's slug.
    pub tenant: String,
    /// The group.
    pub group: String,
    /// The proxy's node id.
    pub node_id: String,
    /// Envoy's admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Who asked for the launch (the token's issuer).
    pub requested_by: String,
}

/// Mints bootstraps for launched proxies, and retires them (the API's, which holds the signing
/// keys and the proxy tokens).
pub trait ProxyBootstraps: Send + Sync {
    /// The bootstrap (JSON text) of `request`, or why there is none.
    fn bootstrap(&self, request: BootstrapRequest) -> BoxFuture<'static, Result<String, String>>;

    /// Revokes the tokens minted for proxy `node_id` of `tenant_id` so far: its container was
    /// removed (a replacement's token is minted after). Answers how many.
    fn retire(&self, tenant_id: Uuid, node_id: String) -> BoxFuture<'static, Result<u64, String>>;
}

/// The open streams of this process by VM, each with its nudge.
#[derive(Default)]
pub(crate) struct Dispatch {
    streams: Mutex<HashMap<Uuid, Registered>>,
}

/// One open stream: its VM and its nudge.
struct Registered {
    tenant_id: Uuid,
    vm: String,
    nudge: watch::Sender<u64>,
}

/// A stream's registration: nudged when its VM has operations; removed when dropped.
pub(crate) struct Nudges {
    dispatch: Arc<Dispatch>,
    stream_id: Uuid,
    /// Moves on at each nudge.
    pub(crate) nudged: watch::Receiver<u64>,
}

impl Drop for Nudges {
    fn drop(&mut self) {
        self.dispatch
            .streams
            .lock()
            .expect("dispatch lock")
            .remove(&self.stream_id);
    }
}

impl Dispatch {
    /// Registers stream `stream_id` of the VM `vm` of `tenant_id`.
    pub(crate) fn register(self: &Arc<Self>, stream_id: Uuid, tenant_id: Uuid, vm: &str) -> Nudges {
        let (sender, nudged) = watch::channel(0);
        self.streams.lock().expect("dispatch lock").insert(
            stream_id,
            Registered {
                tenant_id,
                vm: vm.to_owned(),
                nudge: sender,
            },
        );
        Nudges {
            dispatch: self.clone(),
            stream_id,
            nudged,
        }
    }

    /// Nudges the streams of one VM.
    fn nudge(&self, tenant_id: Uuid, vm: &str) {
        for stream in self.streams.lock().expect("dispatch lock").values() {
            if stream.tenant_id == tenant_id && stream.vm == vm {
                stream.nudge.send_modify(|n| *n += 1);
            }
        }
    }

    /// Nudges every stream (notifications may have been missed).
    fn nudge_all(&self) {
        for stream in self.streams.lock().expect("dispatch lock").values() {
            stream.nudge.send_modify(|n| *n += 1);
        }
    }

    /// Listens for operations on `pool` until `stopping`, nudging the streams they are for.
    pub(crate) fn listen(self: &Arc<Self>, pool: PgPool, mut stopping: watch::Receiver<bool>) {
        let dispatch = self.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            tokio::select! {
                () = dispatch.listen_until_error(&pool) => {}
                () = stop => {}
            }
        });
    }

    async fn listen_until_error(&self, pool: &PgPool) {
        loop {
            match self.listen_once(pool).await {
                Ok(()) => {
                    tracing::warn!("the connection listening for container operations was lost");
                }
                Err(error) => {
                    tracing::warn!(%error, "listening for container operations failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn listen_once(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(ORDERS_CHANNEL).await?;
        // What was notified while nobody listened is read now.
        self.nudge_all();
        loop {
            match listener.try_recv().await? {
                Some(notification) => {
                    if let Some((tenant_id, vm)) = parse_orders_payload(notification.payload()) {
                        self.nudge(tenant_id, vm);
                    }
                }
                // The connection was lost: listen again, then nudge every stream, so that
                // nothing notified meanwhile waits.
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_reaches_the_streams_of_its_vm_alone_and_a_dropped_stream_is_forgotten() {
        let dispatch = Arc::new(Dispatch::default());
        let tenant = Uuid::from_u128(1);
        let mut vm1 = dispatch.register(Uuid::from_u128(10), tenant, "vm-1");
        let mut vm2 = dispatch.register(Uuid::from_u128(11), tenant, "vm-2");
        dispatch.nudge(tenant, "vm-1");
        assert!(vm1.nudged.has_changed().unwrap());
        assert!(!vm2.nudged.has_changed().unwrap());
        dispatch.nudge(Uuid::from_u128(2), "vm-2");
        assert!(
            !vm2.nudged.has_changed().unwrap(),
            "another tenant's VM of that name"
        );
        vm1.nudged.mark_unchanged();
        dispatch.nudge_all();
        assert!(vm1.nudged.has_changed().unwrap() && vm2.nudged.has_changed().unwrap());
        drop(vm1);
        assert_eq!(dispatch.streams.lock().unwrap().len(), 1);
        vm2.nudged.mark_unchanged();
    }
}
