//! TLS 1.3 on the control plane's listeners (NFR-SE-004): one certificate and key (PEM files),
//! TLS 1.3 only, for the HTTP API and the gRPC (xDS) server alike.
//!
//! Handshakes run in their own tasks (with a deadline), so a slow or silent client never holds up
//! the connections behind it; finished handshakes queue for the server to take.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server.
const ACCEPT_QUEUE: usize = 1024;

/// The server's certificate chain and key, checked; replaceable while serving. Clones share
/// what they hold: [`TlsIdentity::replace_with`] on one reaches every server configuration made
/// from any of them, so new connections get the new certificate and open ones keep theirs.
#[derive(Clone)]
pub struct TlsIdentity {
    current: Arc<RwLock<Arc<Loaded>>>,
}

/// One certificate chain and key, ready for handshakes.
struct Loaded {
    certified: Arc<CertifiedKey>,
    chain_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.loaded().certified.cert.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.chain_pem() == other.chain_pem()
    }
}

impl Eq for TlsIdentity {}

impl TlsIdentity {
    /// Reads a PEM certificate chain and a PEM private key; the error says which file is wrong.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate(
                "no PEM certificate in the file".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| TlsError::Key(error.to_string()))?;
        // The key must be the certificate's, of an algorithm the provider signs with.
        let certified =
            CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
                .map_err(|error| TlsError::Key(error.to_string()))?;
        let loaded = Loaded {
            certified: Arc::new(certified),
            chain_pem: chain_pem.to_owned(),
        };
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().expect("TLS identity lock").clone()
    }

    /// The certificate chain as PEM, for clients to trust (bootstraps embed it).
    pub fn chain_pem(&self) -> String {
        self.loaded().chain_pem.clone()
    }

    /// Serves `other`'s certificate and key from now on, wherever this identity is used: new
    /// handshakes get them, open connections keep what they negotiated.
    pub fn replace_with(&self, other: &TlsIdentity) {
        let next = other.loaded();
        *self.current.write().expect("TLS identity lock") = next;
    }

    /// A TLS 1.3-only server configuration offering `alpn` protocols, whose certificate follows
    /// [`TlsIdentity::replace_with`].
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Key(error.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Current(self.current.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Hands each handshake the identity's certificate of the moment.
struct Current(Arc<RwLock<Arc<Loaded>>>);

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Current")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("TLS identity lock").certified.clone())
    }
}

/// What is wrong with a TLS setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The private key, or the pair.
    #[error("private key: {0}")]
    Key(String),
}

/// A connection whose TLS handshake is complete.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl TlsConnection {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Some(self.peer)
    }
}

/// Accepts connections on `listener` and completes their TLS handshakes; the receiver yields the
/// connections ready to serve. A failed or late handshake is dropped (logged at debug level).
pub fn accept(listener: TcpListener, config: Arc<ServerConfig>) -> mpsc::Receiver<TlsConnection> {
    let (ready, connections) = mpsc::channel(ACCEPT_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if ready.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, ready) = (acceptor.clone(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(TlsConnection { stream, peer }).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    connections
}
