//! Keep-alive connections to one gateway: connect (TCP, TLS), check out, check in, evict.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::error::ProxyError;
use crate::h2_conns::{Checkout, H2Conns, Opening, Stream};
use crate::metrics::GatewayMetrics;
use crate::observed_io::{ByteCount, Observed};
use crate::tls_client::describe_failure;

pub type Body = Full<Bytes>;

/// The header count hyper's HTTP/1 parser allows when none is set.
pub const HYPER_MAX_HEADERS: usize = 100;

/// The connections to one gateway.
///
/// HTTP/1.1 checkout takes the most recently used idle connection (LIFO):
/// the one least likely to have been closed by the gateway's keep-alive
/// timer, which also lets surplus connections age out at the bottom of the
/// stack. A gateway that negotiates h2 by ALPN gets shared, multiplexed
/// connections instead ([`H2Conns`]). Each gateway has its own locks, held
/// only to push, pop or clone.
#[derive(Debug)]
pub struct GatewayPool {
    /// `host:port` as resolved for every new connection.
    address: String,
    tls: Option<GatewayTls>,
    idle: Mutex<Vec<IdleConn>>,
    h2: H2Conns,
    settings: PoolSettings,
    stats: Arc<GatewayMetrics>,
}

/// How to speak TLS to an `https` gateway.
#[derive(Debug, Clone)]
pub struct GatewayTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The gateway's host, sent as SNI and checked against its certificate.
    pub server_name: ServerName<'static>,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_idle: usize,
    /// Kept below common upstream keep-alive timeouts (nginx 75 s, cloud
    /// balancers 60 s) so that gwproxy, not the gateway, closes first.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests one h2 connection carries at once before another opens.
    pub h2_max_streams: usize,
    /// Header fields allowed in an HTTP/1.1 response head.
    pub max_response_headers: usize,
}

#[derive(Debug)]
struct IdleConn {
    sender: http1::SendRequest<Body>,
    received: Arc<ByteCount>,
    since: Instant,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct PooledConn {
    pub sender: Sender,
    /// Whether it carried an earlier request: only such a connection can
    /// fail from a keep-alive race, and so earn a retry.
    pub reused: bool,
    _in_use: InUse,
}

/// Counts a connection in use until it is checked in or dropped.
#[derive(Debug)]
struct InUse(Arc<GatewayMetrics>);

impl InUse {
    fn new(stats: &Arc<GatewayMetrics>) -> InUse {
        stats.in_use.fetch_add(1, Ordering::Relaxed);
        InUse(stats.clone())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GatewayPool {
    pub fn new(
        address: String,
        tls: Option<GatewayTls>,
        settings: PoolSettings,
        stats: Arc<GatewayMetrics>,
    ) -> Arc<Self> {
        let pool = Arc::new(GatewayPool {
            address,
            tls,
            idle: Mutex::new(Vec::new()),
            h2: H2Conns::new(settings.h2_max_streams),
            settings,
            stats,
        });
        spawn_reaper(Arc::downgrade(&pool), settings.idle_timeout);
        pool
    }

    /// A stream on a shared h2 connection, a live idle HTTP/1.1 one, or a
    /// new one.
    pub async fn checkout(&self) -> Result<PooledConn, ProxyError> {
        match self.h2.checkout().await {
            Checkout::Ready(sender, stream) => {
                return Ok(self.checked_out(Sender::Http2(sender, stream), true));
            }
            Checkout::Open(opening) => return self.connect_as(Some(opening)).await,
            Checkout::NotH2 => {}
        }
        while let Some(mut idle) = self.pop_idle() {
            // Resolves at once on a live connection; fails on one the
            // gateway closed while it sat in the pool.
            if idle.sender.ready().await.is_ok() {
                return Ok(self.checked_out(Sender::Http1(idle.sender, idle.received), true));
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.connect().await
    }

    /// Opens a new connection, TLS handshake included, within the connect
    /// timeout.
    pub async fn connect(&self) -> Result<PooledConn, ProxyError> {
        self.connect_as(None).await
    }

    /// Opens a new connection; `opening` is the h2 opening it fulfils.
    ///
    /// Boxed: the TLS handshake's state is kilobytes, and inline it would
    /// make every request's future that large, to be moved (copied) on
    /// each poll setup even though most requests reuse a connection.
    async fn connect_as(&self, opening: Option<Opening<'_>>) -> Result<PooledConn, ProxyError> {
        Box::pin(self.connect_inline(opening)).await
    }

    /// Returns a connection whose response was read to the end. (An h2
    /// connection stays shared; there is nothing to return.)
    pub fn checkin(&self, conn: PooledConn) {
        let Sender::Http1(sender, received) = conn.sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push(IdleConn {
                sender,
                received,
                since: Instant::now(),
            });
            self.stats.idle.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a retry on a fresh connection, for the metrics.
    pub fn note_retry(&self) {
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
    }

    fn checked_out(&self, sender: Sender, reused: bool) -> PooledConn {
        let counter = if reused {
            &self.stats.reused
        } else {
            &self.stats.opened
        };
        counter.fetch_add(1, Ordering::Relaxed);
        PooledConn {
            sender,
            reused,
            _in_use: InUse::new(&self.stats),
        }
    }

    async fn connect_inline(&self, opening: Option<Opening<'_>>) -> Result<PooledConn, ProxyError> {
        let timeout = self.settings.connect_timeout;
        let opened = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| {
                ProxyError::upstream(format!(
                    "timeout: could not connect to the gateway within {} ms",
                    timeout.as_millis()
                ))
            })??;

        debug!(address = %self.address, h2 = opened.is_h2(), "opened gateway connection");
        let sender = match opened {
            Handshaken::Http1(sender, received) => {
                self.h2.speaks_http1(opening);
                Sender::Http1(sender, received)
            }
            Handshaken::Http2(sender) => {
                let stream = self.h2.add(sender.clone(), opening);
                Sender::Http2(sender, stream)
            }
        };
        Ok(self.checked_out(sender, false))
    }

    async fn open(&self) -> Result<Handshaken, ProxyError> {
        let tcp = self.open_tcp().await?;
        let max_headers = self.settings.max_response_headers;
        let Some(tls) = &self.tls else {
            return handshake(tcp, false, max_headers).await;
        };

        let stream = TlsConnector::from(tls.config.clone())
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|e| ProxyError::upstream(describe_failure(&e)))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        handshake(stream, h2, max_headers).await
    }

    async fn open_tcp(&self) -> Result<TcpStream, ProxyError> {
        let addrs = tokio::net::lookup_host(&self.address)
            .await
            .map_err(|_| ProxyError::upstream("could not resolve the gateway's host name"))?;

        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Requests and envelopes are small, whole writes:
                    // Nagle's delay would only add latency.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(match last_error {
            Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                ProxyError::upstream("the gateway refused the connection")
            }
            Some(e) => ProxyError::upstream(format!("could not connect to the gateway: {e}")),
            None => ProxyError::upstream("the gateway's host name has no addresses"),
        })
    }

    fn pop_idle(&self) -> Option<IdleConn> {
        let mut idle = self.lock();
        while let Some(conn) = idle.pop() {
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            if conn.since.elapsed() < self.settings.idle_timeout && !conn.sender.is_closed() {
                return Some(conn);
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Drops connections that outlived the idle timeout or were closed by
    /// the gateway, so that they do not hold sockets until next checkout.
    fn evict_expired(&self) {
        let timeout = self.settings.idle_timeout;
        self.h2.evict_idle(timeout);
        let mut idle = self.lock();
        let before = idle.len();
        idle.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
        let evicted = (before - idle.len()) as u64;
        self.stats.idle.fetch_sub(evicted as i64, Ordering::Relaxed);
        self.stats.evicted.fetch_add(evicted, Ordering::Relaxed);
    }

    /// This pool's figures, for the request's metrics.
    pub fn stats(&self) -> &GatewayMetrics {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        // A panic while holding this lock cannot leave the Vec invalid, so a
        // poisoned lock is still safe to use.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for GatewayPool {
    /// A pool replaced by a config reload takes its idle connections with it.
    fn drop(&mut self) {
        let idle = self.lock().len() as i64;
        self.stats.idle.fetch_sub(idle, Ordering::Relaxed);
    }
}

/// Either kind of connection, behind one sending interface.
#[derive(Debug)]
pub enum Sender {
    /// With the bytes the connection has received so far: a failed request
    /// may be retried only if none arrived for it.
    Http1(http1::SendRequest<Body>, Arc<ByteCount>),
    /// With the request's stream on it. Streams share the connection, so
    /// bytes cannot be told apart.
    Http2(http2::SendRequest<Body>, Stream),
}

/// A connection just opened, before it joins the pool.
enum Handshaken {
    Http1(http1::SendRequest<Body>, Arc<ByteCount>),
    Http2(http2::SendRequest<Body>),
}

impl Handshaken {
    fn is_h2(&self) -> bool {
        matches!(self, Handshaken::Http2(_))
    }
}

impl Sender {
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::Http2(..))
    }

    /// Bytes received so far on an HTTP/1.1 connection.
    pub fn received(&self) -> Option<u64> {
        match self {
            Sender::Http1(_, received) => Some(received.get()),
            Sender::Http2(..) => None,
        }
    }

    /// Sends, handing the request back when it was never written.
    pub async fn try_send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match self {
            Sender::Http1(sender, _) => sender.try_send_request(request).await,
            Sender::Http2(sender, _) => sender.try_send_request(request).await,
        }
    }
}

/// The HTTP handshake on a connected stream; the connection's I/O then
/// runs in its own task until either side closes it.
async fn handshake<I>(io: I, h2: bool, max_headers: usize) -> Result<Handshaken, ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| ProxyError::upstream(format!("gateway handshake failed: {e}"));
    let io = TokioIo::new(io);
    if h2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(failed)?;
        spawn_connection(connection);
        return Ok(Handshaken::Http2(sender));
    }
    let received = Arc::new(ByteCount::default());
    let io = TokioIo::new(Observed::new(io.into_inner(), received.clone()));
    let mut builder = http1::Builder::new();
    // As on the server side (server.rs), naming hyper's default count
    // would only make it fill a buffer that large for every response.
    if max_headers != HYPER_MAX_HEADERS {
        builder.max_headers(max_headers);
    }
    let (sender, connection) = builder.handshake(io).await.map_err(failed)?;
    spawn_connection(connection);
    Ok(Handshaken::Http1(sender, received))
}

fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "gateway connection ended with an error");
        }
    });
}

/// Sweeps the pool every half idle timeout until the pool is dropped.
fn spawn_reaper(pool: Weak<GatewayPool>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match pool.upgrade() {
                Some(pool) => pool.evict_expired(),
                None => return,
            }
        }
    });
}
