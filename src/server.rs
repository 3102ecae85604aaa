//! The listener: bind, accept within the connection cap, and drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::connection::{self, ConnTimeouts};
use crate::state::State;
use crate::tls_server::{self, ListenerTls};

/// Pending connections the kernel may queue before `accept`: large enough
/// for load generators that open hundreds of connections at once.
const LISTEN_BACKLOG: u32 = 4096;

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    state: Arc<State>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: ConnTimeouts,
    max_connections: usize,
    grace: Duration,
}

impl Server {
    /// Binds `config.listen`, serving HTTPS when `tls` is given. Needs a
    /// running tokio runtime. The error is one line naming the key at fault.
    pub fn bind(config: &Config, tls: Option<Arc<ListenerTls>>) -> Result<Server, String> {
        let state = State::new(config)?;
        let listener = listen(config.listen)
            .map_err(|e| format!("cannot listen on {} (key `listen`): {e}", config.listen))?;
        Ok(Server {
            listener,
            tls,
            state: Arc::new(state),
            builder: Arc::new(http_builder(config)),
            timeouts: ConnTimeouts {
                header: config.timeouts.request_header,
                idle: config.timeouts.idle,
            },
            max_connections: config.limits.max_connections,
            grace: config.timeouts.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` resolves, then lets open connections finish
    /// their requests for up to `timeouts.shutdown_grace_ms`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let connections = Arc::new(Semaphore::new(self.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);

        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => break,
                accepted = self.listener.accept() => self.admit(accepted, &connections, &stop_rx).await,
            }
        }

        let (max, grace) = (self.max_connections, self.grace);
        drop(self);
        info!("shutting down: no new connections, draining open ones");
        let _ = stop_tx.send(true);
        drain(&connections, max, grace).await;
    }

    async fn admit(
        &self,
        accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
        connections: &Arc<Semaphore>,
        stop: &watch::Receiver<bool>,
    ) {
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };

        // Over the cap the connection is closed at once: a quick, clean
        // refusal that a load balancer can retry elsewhere.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "connection cap reached; closing new connection");
            return;
        };
        let _ = stream.set_nodelay(true);

        let state = self.state.clone();
        let builder = self.builder.clone();
        let timeouts = self.timeouts;
        let stop = stop.clone();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection::serve(stream, state, builder, timeouts, stop).await,
                Some(tls) => {
                    if let Some(stream) = tls_server::accept(&tls, stream).await {
                        connection::serve(stream, state, builder, timeouts, stop).await;
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Waits until every connection task has returned its permit.
async fn drain(connections: &Semaphore, max: usize, grace: Duration) {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, connections.acquire_many(all)).await {
        Ok(_) => info!("all connections closed"),
        Err(_) => warn!(
            open = max - connections.available_permits(),
            "shutdown grace period over; closing remaining connections"
        ),
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Lets a restarted gwproxy bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// HTTP/1.1 and h2 (prior knowledge, or ALPN under TLS) on one listener,
/// with the limits from the config.
fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // connection.rs times request heads and idle keep-alive itself.
        .header_read_timeout(None)
        .max_headers(limits.max_header_count)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Bounds CVE-2023-44487 ("rapid reset"): streams reset by the client
        // before gwproxy accepted them stop counting after this many.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_PENDING_RESETS);
    builder
}

/// Concurrent streams per h2 connection; the global request cap still
/// applies on top.
const H2_MAX_STREAMS: u32 = 256;
const H2_MAX_PENDING_RESETS: usize = 64;
