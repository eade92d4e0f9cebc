//! The transport: accepts TCP (optionally TLS) connections within the
//! configured limits, serves each with hyper, and shuts down gracefully.
//!
//! axum's own `serve` has no knobs for these limits, so the accept loop is
//! ours: a connection permit per connection (`max_connections`), a header
//! read timeout (slowloris) and a keep-alive idle timeout, a bound on the
//! request head size, and a TLS handshake bounded like a request head.
//!
//! The keep-alive timeout is longer than any client's on purpose: Go's HTTP
//! client (OpenIM's) keeps an idle connection for 90 s and does not resend a
//! POST that fails because the server closed that connection just before it,
//! and OpenIM never retries a callback. So the client must always be the side
//! that closes an idle connection; the header-read timeout, apart from it,
//! still ends slow or silent clients.
//!
//! Both timeouts are kept by one watcher per connection rather than by
//! hyper's own header timer, which re-arms a timer for every request: the
//! watcher sleeps until the next deadline and only looks at two timestamps
//! the connection updates as it reads and serves.

mod threads;

use crate::http::refusals::Refused;
use crate::settings::{ServerSettings, Settings};
use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Connection limits, from `[server]`.
/// Headers hyper parses per HTTP/1 request unless told otherwise.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Whether requests carry the peer address (`auth.allow_ips` needs it).
    pub peer_address: bool,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Threads that serve connections (`server.worker_threads`; 0: one per core).
    pub connection_threads: usize,
    /// Where refusals marked on responses are logged, with the peer's address.
    pub refusals: Option<Arc<crate::http::refusals::RefusalLog>>,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Self {
        let server = &settings.server;
        Limits {
            peer_address: !settings.auth.allow_ips.is_empty(),
            header_read_timeout: server.header_read_timeout,
            keep_alive_timeout: server.keep_alive_timeout,
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            connection_threads: server.worker_threads,
            refusals: None,
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
    app: crate::http::App,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop_connections, stopping) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns None once all are gone.
    let (connection_alive, mut connections_done) = mpsc::channel::<()>(1);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut threads = threads::ConnectionThreads::start(limits.connection_threads)?;
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
        // Off this runtime's reactor, onto the connection thread's: from_std registers it there.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "cannot hand the connection over");
                continue;
            }
        };
        let connection = Connection {
            app: app.clone(),
            peer,
            limits: Arc::clone(&limits),
            stopping: stopping.clone(),
            _alive: connection_alive.clone(),
            _permit: permit,
        };
        let tls = tls.clone();
        threads.next().spawn(async move {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => return tracing::debug!(%peer, %error, "cannot serve the connection"),
            };
            match tls {
                None => connection.serve(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout(connection.limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_connections.send(true);
    drop(connection_alive);
    let _ = connections_done.recv().await;
    Ok(())
}

/// One accepted connection and what it needs.
struct Connection {
    app: crate::http::App,
    peer: SocketAddr,
    limits: Arc<Limits>,
    stopping: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TrackedIo { inner: io, activity: Arc::clone(&activity) };
        let service = {
            let (app, peer, activity) = (self.app.clone(), self.peer, Arc::clone(&activity));
            let peer_address = self.limits.peer_address;
            let refusals = self.limits.refusals.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // For auth.allow_ips, and for /messages (private to loopback without
                // auth.token): axum's ConnectInfo extractor reads this. Only then:
                // the first extension costs every request an allocation.
                if peer_address || crate::http::auth::private_to_loopback(request.uri().path()) {
                    request.extensions_mut().insert(ConnectInfo(peer));
                }
                let busy = activity.request_started();
                let response = app.answer(request.map(Body::new));
                let refusals = refusals.clone();
                async move {
                    let mut response = response.await;
                    drop(busy);
                    if let (Ok(answer), Some(log)) = (&mut response, &refusals)
                        && let Some(refused) = answer.extensions_mut().remove::<Refused>()
                    {
                        log.log(&refused, peer.ip());
                    }
                    response
                }
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No timer for hyper: without one it keeps no header timeout of its own.
        builder.http1().max_buf_size(self.limits.max_header_bytes);
        // hyper's default of 100 keeps the parsed headers on the stack; any
        // other count moves them to the heap (about 5% slower), so only then.
        if self.limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            builder.http1().max_headers(self.limits.max_headers);
        }
        builder.http2().max_header_list_size(self.limits.max_header_bytes as u32);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        // The two reasons to end the connection early wait in a
        // FuturesUnordered, which polls only the one whose own waker fired:
        // in a plain select! both would be polled at every wake of this
        // task, twice a request (a lock and a timer check: about 570
        // instructions a request, scripts/bench-instructions.sh).
        let limits = Arc::clone(&self.limits);
        let mut stopping = self.stopping.clone();
        let mut ends: FuturesUnordered<BoxFuture<'static, End>> = FuturesUnordered::new();
        ends.push(Box::pin(async move {
            let _ = stopping.changed().await;
            End::Stop
        }));
        ends.push(Box::pin(async move {
            activity.expired(&limits).await;
            End::Idle
        }));
        loop {
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    break;
                }
                Some(end) = ends.next() => match end {
                    End::Stop => {
                        connection.as_mut().graceful_shutdown();
                        // Closing: no idle cut any more, the requests in flight finish.
                        ends.clear();
                    }
                    End::Idle => {
                        // No request is running: drop the connection outright. (A graceful
                        // shutdown would wait for the half-sent head of a slowloris client.)
                        tracing::debug!(peer = %self.peer, "closing an idle or stalled connection");
                        break;
                    }
                },
            }
        }
    }
}

/// Why a connection ends before its client closes it.
enum End {
    /// The server is shutting down.
    Stop,
    /// Idle past `keep_alive_timeout`, or a request head too slow.
    Idle,
}

/// What a connection's watcher needs to know: whether a request is running,
/// when the last one finished, and when the bytes of the next one began.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` at which the last request finished.
    last_done_ms: AtomicU64,
    /// Milliseconds after `started` (plus one; 0 for none) at which bytes of
    /// a request head that has not started yet first arrived.
    head_started_ms: AtomicU64,
    /// A request has been served on this connection: from then on its idle
    /// time is a keep-alive, before it an unused connection.
    served_any: AtomicBool,
}

/// Marks a request as running until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.last_done_ms.store(activity.elapsed_ms(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Release);
        self.served_any.store(true, Ordering::Release);
        Busy(Arc::clone(self))
    }

    /// Bytes arrived: between requests, they start the next request's head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_started_ms.load(Ordering::Acquire) == 0 {
            self.head_started_ms.store(self.elapsed_ms() + 1, Ordering::Release);
        }
    }

    /// Completes when the connection has outstayed its welcome: a request
    /// head begun more than `header_read_timeout` ago and still not complete;
    /// a new connection that sent nothing for `header_read_timeout` (a client
    /// that means to call sends its request at once); or, after a request,
    /// no next one for `keep_alive_timeout`.
    async fn expired(&self, limits: &Limits) {
        loop {
            let head_started = self.head_started_ms.load(Ordering::Acquire);
            let deadline_ms = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: the response deadline bounds the request; look again later.
                None
            } else if head_started > 0 {
                Some(head_started - 1 + limits.header_read_timeout.as_millis() as u64)
            } else if !self.served_any.load(Ordering::Acquire) {
                Some(limits.header_read_timeout.as_millis() as u64)
            } else {
                Some(self.last_done_ms.load(Ordering::Acquire) + limits.keep_alive_timeout.as_millis() as u64)
            };
            match deadline_ms {
                Some(deadline) if self.elapsed_ms() >= deadline => return,
                Some(deadline) => {
                    // A request served meanwhile moves the deadline to its end plus
                    // keep_alive_timeout, which may come sooner: look again by then.
                    let next_look = self.elapsed_ms() + limits.keep_alive_timeout.as_millis() as u64;
                    tokio::time::sleep_until(self.started + Duration::from_millis(deadline.min(next_look)))
                        .await
                }
                None => tokio::time::sleep(limits.keep_alive_timeout).await,
            }
        }
    }
}

/// The connection's stream, telling its [`Activity`] when bytes arrive.
struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
