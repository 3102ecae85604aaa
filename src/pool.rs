//! Keep-alive HTTP/1.1 connections to one gateway: connect, check out, check in, evict.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::ProxyError;

/// The idle connections to one gateway.
///
/// Checkout takes the most recently used connection (LIFO): it is the one
/// least likely to have been closed by the gateway's own keep-alive timer,
/// and it lets surplus connections age out at the bottom of the stack.
/// Each gateway has its own lock, held only to push or pop.
#[derive(Debug)]
pub struct GatewayPool {
    /// `host:port` as resolved for every new connection.
    address: String,
    idle: Mutex<Vec<IdleConn>>,
    settings: PoolSettings,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_idle: usize,
    /// Kept below common upstream keep-alive timeouts (nginx 75 s, cloud
    /// balancers 60 s) so that gwproxy, not the gateway, closes first.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug)]
struct IdleConn {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct PooledConn {
    pub sender: SendRequest<Full<Bytes>>,
    /// Whether it carried an earlier request: only such a connection can
    /// fail from a keep-alive race, and so earn a retry.
    pub reused: bool,
}

impl GatewayPool {
    pub fn new(address: String, settings: PoolSettings) -> Arc<Self> {
        let pool = Arc::new(GatewayPool {
            address,
            idle: Mutex::new(Vec::new()),
            settings,
        });
        spawn_reaper(Arc::downgrade(&pool), settings.idle_timeout);
        pool
    }

    /// A live idle connection, or a new one.
    pub async fn checkout(&self) -> Result<PooledConn, ProxyError> {
        while let Some(mut idle) = self.pop_idle() {
            // Resolves at once on a live connection; fails on one the
            // gateway closed while it sat in the pool.
            if idle.sender.ready().await.is_ok() {
                return Ok(PooledConn {
                    sender: idle.sender,
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    /// Returns a connection whose response was read to the end.
    pub fn checkin(&self, conn: PooledConn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push(IdleConn {
                sender: conn.sender,
                since: Instant::now(),
            });
        }
    }

    /// Opens a new connection within the connect timeout.
    pub async fn connect(&self) -> Result<PooledConn, ProxyError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.open_tcp())
            .await
            .map_err(|_| {
                ProxyError::upstream(format!(
                    "timed out connecting to the gateway after {} ms",
                    timeout.as_millis()
                ))
            })??;

        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::upstream(format!("gateway handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "gateway connection ended with an error");
            }
        });

        debug!(address = %self.address, "opened gateway connection");
        Ok(PooledConn {
            sender,
            reused: false,
        })
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
            if conn.since.elapsed() < self.settings.idle_timeout && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Drops connections that outlived the idle timeout or were closed by
    /// the gateway, so that they do not hold sockets until next checkout.
    fn evict_expired(&self) {
        let timeout = self.settings.idle_timeout;
        self.lock()
            .retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        // A panic while holding this lock cannot leave the Vec invalid, so a
        // poisoned lock is still safe to use.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
