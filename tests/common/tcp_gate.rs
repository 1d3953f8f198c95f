//! A TCP forwarder to Postgres that a test can close, as a database that stops does (open
//! connections broken, new ones refused), and open again on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The gate: forwards every connection to its port on to the target while open.
pub struct TcpGate {
    port: u16,
    target: SocketAddr,
    accepting: Mutex<Option<JoinHandle<()>>>,
    forwarding: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpGate {
    /// Opens a gate on a free port of 127.0.0.1 to `target`.
    pub async fn open_to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Self {
            port: listener.local_addr().unwrap().port(),
            target,
            accepting: Mutex::default(),
            forwarding: Arc::default(),
        };
        gate.serve(listener);
        gate
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes it: new connections are refused, open ones broken.
    pub fn close(&self) {
        if let Some(accepting) = self.accepting.lock().unwrap().take() {
            accepting.abort();
        }
        for connection in self.forwarding.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Opens it again on the same port.
    pub async fn reopen(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (target, forwarding) = (self.target, self.forwarding.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let connection = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                forwarding.lock().unwrap().push(connection);
            }
        });
        *self.accepting.lock().unwrap() = Some(accepting);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.close();
    }
}
