//! The transport: accepts TCP (optionally TLS) connections within the
//! configured limits, serves each with hyper, and shuts down gracefully.
//!
//! axum's own `serve` has no knobs for these limits, so the accept loop is
//! ours: a connection permit per connection (`max_connections`), hyper's
//! header read timeout (slowloris), a keep-alive idle timeout, a bound on the
//! request head size, and a TLS handshake bounded like a request head.

use crate::settings::ServerSettings;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

/// Connection limits, from `[server]`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl From<&ServerSettings> for Limits {
    fn from(server: &ServerSettings) -> Self {
        Limits {
            header_read_timeout: server.header_read_timeout,
            keep_alive_timeout: server.keep_alive_timeout,
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
        }
    }
}

/// A TLS acceptor for `server.tls`, or `None` when TLS is off.
pub fn tls_acceptor(server: &ServerSettings) -> io::Result<Option<TlsAcceptor>> {
    let tls = &server.tls;
    if !tls.enabled() {
        return Ok(None);
    }
    let invalid = |key: &str, error: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{key}: {error}"))
    };
    let certificates = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| invalid("server.tls.cert_path", &error))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|error| invalid("server.tls.key_path", &error))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("server.tls", &error))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| invalid("server.tls", &error))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets every connection finish its request in flight, and
/// returns once all connections are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop_connections, stopping) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns None once all are gone.
    let (connection_alive, mut connections_done) = mpsc::channel::<()>(1);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or the peer left before accept: pause, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            peer,
            limits: Arc::clone(&limits),
            stopping: stopping.clone(),
            _alive: connection_alive.clone(),
            _permit: permit,
        };
        match tls.clone() {
            None => tokio::spawn(connection.serve(stream)),
            Some(acceptor) => tokio::spawn(async move {
                match tokio::time::timeout(connection.limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => connection.serve(stream).await,
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
        };
    }
    drop(listener);
    let _ = stop_connections.send(true);
    drop(connection_alive);
    let _ = connections_done.recv().await;
    Ok(())
}

/// One accepted connection and what it needs.
struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: Arc<Limits>,
    stopping: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = {
            let (app, peer, activity) = (self.app.clone(), self.peer, Arc::clone(&activity));
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // For auth.allow_ips: axum's ConnectInfo extractor reads this.
                request.extensions_mut().insert(ConnectInfo(peer));
                let busy = activity.request_started();
                let response = app.clone().oneshot(request.map(Body::new));
                async move {
                    let response = response.await;
                    drop(busy);
                    response
                }
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes);
        builder.http2().timer(TokioTimer::new()).max_header_list_size(self.limits.max_header_bytes as u32);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    break;
                }
                _ = self.stopping.changed(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.idle_for(self.limits.keep_alive_timeout), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// When a connection last finished a request, and whether one is running.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` at which the last request finished.
    last_done_ms: AtomicU64,
}

/// Marks a request as running until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.last_done_ms.store(activity.started.elapsed().as_millis() as u64, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Activity { started: Instant::now(), in_flight: AtomicUsize::new(0), last_done_ms: AtomicU64::new(0) }
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Completes once no request has run for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let idle_since = self.started + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
            if self.in_flight.load(Ordering::Acquire) == 0 && idle_since.elapsed() >= timeout {
                return;
            }
            let wake = if self.in_flight.load(Ordering::Acquire) == 0 {
                idle_since + timeout
            } else {
                Instant::now() + timeout
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}
