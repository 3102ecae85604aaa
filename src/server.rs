//! The listeners and their workers: bind, accept within the connection cap, drain on shutdown.
//!
//! gwproxy runs one single-threaded event loop per worker, as nginx runs
//! one process per worker. Each has its own listening socket on the same
//! address (`SO_REUSEPORT`) and its own gateway pools, so a request, its
//! client connection and its gateway connection are served by one thread.
//!
//! The kernel spreads connections over the sockets by a hash of their
//! addresses, which leaves some workers with several more kept-alive
//! connections than others, and the busiest one then sets everyone's
//! latency. So a worker that accepts a connection while another has
//! clearly fewer open hands the socket over (`hand_off_to`), once per
//! connection; requests are never handed off. The connection cap, the
//! request cap and the open counts are shared, as atomics.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::connection::{self, ConnTimeouts};
use crate::metrics::Registry;
use crate::metrics_endpoint;
use crate::pool::HYPER_MAX_HEADERS;
use crate::state::{Shared, State, StateCell};
use crate::tls_server::{self, ListenerTls};

/// Pending connections the kernel may queue per listener before `accept`:
/// large enough for load generators that open hundreds at once.
const LISTEN_BACKLOG: u32 = 4096;

/// Concurrent streams per h2 connection; the global request cap still
/// applies on top.
const H2_MAX_STREAMS: u32 = 256;
const H2_MAX_PENDING_RESETS: usize = 64;

/// Bound listeners, ready to serve.
pub struct Server {
    listeners: Vec<std::net::TcpListener>,
    /// Each worker's end of its hand-off channel, by worker index.
    inboxes: Vec<mpsc::UnboundedReceiver<Handoff>>,
    metrics_listener: Option<std::net::TcpListener>,
    common: Arc<Common>,
}

/// A connection one worker accepted for another, with its place under
/// `limits.max_connections`.
struct Handoff {
    stream: std::net::TcpStream,
    slot: OwnedSemaphorePermit,
}

/// A worker as the others see it.
struct Peer {
    /// Client connections it serves or has been handed.
    open: AtomicUsize,
    inbox: mpsc::UnboundedSender<Handoff>,
}

/// An open count no worker reaches: marks a worker that has gone.
const GONE: usize = usize::MAX / 2;

/// Applies a new config to running workers (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    common: Arc<Common>,
}

/// What every worker shares.
struct Common {
    /// The current settings; a reload sends new ones and every worker
    /// builds its own state (and pools) from them.
    shared: watch::Sender<Arc<Shared>>,
    registry: Arc<Registry>,
    tls: Option<Arc<ListenerTls>>,
    builder: auto::Builder<TokioExecutor>,
    timeouts: ConnTimeouts,
    /// `limits.max_connections`, across all workers.
    connections: Arc<Semaphore>,
    /// Every worker, by index, for choosing where a connection goes.
    peers: Vec<Peer>,
    max_connections: usize,
    grace: Duration,
    /// The config the listeners, builder and logging were made from: a
    /// reload compares its restart-only keys against it.
    started: Config,
}

impl Server {
    /// Binds one socket per worker on `config.listen`, serving HTTPS when
    /// `tls` is given. Needs a tokio runtime to bind in. The error is one
    /// line naming the key at fault.
    pub fn bind(config: &Config, tls: Option<Arc<ListenerTls>>) -> Result<Server, String> {
        let registry = Arc::new(Registry::default());
        let shared = Shared::new(config, registry.clone())?;
        let reuse = config.reuse_port;
        let listeners = listen_all(config.listen, config.workers, reuse)
            .map_err(|e| format!("cannot listen on {} (key `listen`): {e}", config.listen))?;
        let metrics_listener = match (config.metrics.enabled, config.metrics.listen) {
            (true, Some(addr)) => Some(
                listen_all(addr, 1, reuse)
                    .map_err(|e| format!("cannot listen on {addr} (key `metrics.listen`): {e}"))?
                    .remove(0),
            ),
            _ => None,
        };

        let (peers, inboxes) = (0..listeners.len())
            .map(|_| {
                let (inbox, receiver) = mpsc::unbounded_channel();
                let open = AtomicUsize::new(0);
                (Peer { open, inbox }, receiver)
            })
            .unzip();
        let common = Common {
            shared: watch::Sender::new(Arc::new(shared)),
            registry,
            tls,
            builder: http_builder(config),
            timeouts: ConnTimeouts {
                header: config.timeouts.request_header,
                idle: config.timeouts.idle,
            },
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            peers,
            max_connections: config.limits.max_connections,
            grace: config.timeouts.shutdown_grace,
            started: config.clone(),
        };
        Ok(Server {
            listeners,
            inboxes,
            metrics_listener,
            common: Arc::new(common),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners[0].local_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    pub fn reloader(&self) -> Reloader {
        Reloader {
            common: self.common.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then lets open connections finish
    /// their requests for up to `timeouts.shutdown_grace_ms`. The first
    /// worker runs on the calling thread's runtime, the others on threads
    /// of their own.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(listener) = self.metrics_listener {
            tokio::spawn(metrics_endpoint::serve(
                listener,
                self.common.registry.clone(),
            ));
        }
        let mut ends = self.listeners.into_iter().zip(self.inboxes).enumerate();
        let Some((_, first)) = ends.next() else {
            return;
        };

        let mut finished = Vec::new();
        for (index, ends) in ends {
            match spawn_worker(index, ends, self.common.clone(), stop_rx.clone()) {
                Ok(done) => finished.push(done),
                Err(error) => {
                    warn!(%error, "could not start a worker thread");
                    self.common.peers[index].open.store(GONE, Ordering::Relaxed);
                }
            }
        }

        let here = worker(0, first, self.common.clone(), stop_rx);
        let mut here = std::pin::pin!(here);
        tokio::select! {
            _ = shutdown => {}
            _ = here.as_mut() => {}
        }
        info!("shutting down: no new connections, draining open ones");
        let _ = stop_tx.send(true);
        here.await;
        for done in finished {
            let _ = done.await;
        }
        info!("all workers stopped");
    }
}

/// Starts a worker on its own thread with its own single-threaded runtime;
/// the receiver resolves when it has drained.
fn spawn_worker(
    index: usize,
    ends: WorkerEnds,
    common: Arc<Common>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("gwproxy-worker-{index}"))
        .spawn(move || {
            runtime.block_on(worker(index, ends, common, stop));
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// A worker's own listening socket and the end of its hand-off channel.
type WorkerEnds = (std::net::TcpListener, mpsc::UnboundedReceiver<Handoff>);

/// What a worker's accept path needs at hand.
struct Here<'a> {
    index: usize,
    common: &'a Arc<Common>,
    state: &'a Arc<StateCell>,
    /// This worker's connections, so that it waits for its own before its
    /// runtime, and their tasks with it, goes away.
    mine: &'a Arc<Semaphore>,
    stop: &'a watch::Receiver<bool>,
}

/// One worker: accept until told to stop, then drain its own connections.
async fn worker(
    index: usize,
    (listener, mut inbox): WorkerEnds,
    common: Arc<Common>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "worker could not use its listener");
            common.peers[index].open.store(GONE, Ordering::Relaxed);
            return;
        }
    };
    let metrics = common.registry.worker();
    let mut settings = common.shared.subscribe();
    let current = settings.borrow_and_update().clone();
    let state = Arc::new(StateCell::new(State::for_worker(current, metrics.clone())));
    let mine = Arc::new(Semaphore::new(common.max_connections));
    let stopping = stop.clone();
    let here = Here {
        index,
        common: &common,
        state: &state,
        mine: &mine,
        stop: &stopping,
    };

    while !*stop.borrow() {
        tokio::select! {
            _ = stop.changed() => break,
            Ok(()) = settings.changed() => {
                // New requests see the new settings; requests in flight
                // keep the state they started with, and its pools.
                let fresh = settings.borrow_and_update().clone();
                state.store(State::for_worker(fresh, metrics.clone()));
            }
            accepted = listener.accept() => admit(accepted, &here).await,
            Some(handoff) = inbox.recv() => take_over(handoff, &here),
        }
    }
    accept_backlog(&listener, &here).await;
    drop(listener);
    // Connections other workers handed over before they saw the stop.
    while let Ok(handoff) = inbox.try_recv() {
        take_over(handoff, &here);
    }
    drop(inbox);
    common.peers[index].open.store(GONE, Ordering::Relaxed);
    drain(&mine, common.max_connections, common.grace).await;
}

/// Takes the connections the kernel has already completed for this
/// listener: closing a listener resets them, and with `SO_REUSEPORT` they
/// were meant for this process, not for the one taking over. (Linux's
/// `net.ipv4.tcp_migrate_req=1` also moves the few that arrive between
/// this and the close; README "Running many instances".)
async fn accept_backlog(listener: &TcpListener, here: &Here<'_>) {
    loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => admit(accepted, here).await,
            () = std::future::ready(()) => return,
        }
    }
}

async fn admit(accepted: std::io::Result<(TcpStream, SocketAddr)>, here: &Here<'_>) {
    let common = here.common;
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
    let Ok(slot) = common.connections.clone().try_acquire_owned() else {
        debug!(%peer, "connection cap reached; closing new connection");
        return;
    };
    let _ = stream.set_nodelay(true);

    // Kept when no worker has clearly fewer open, and while stopping: the
    // others may have emptied their inboxes for the last time.
    let target = hand_off_to(&common.peers, here.index);
    if target == here.index || *here.stop.borrow() {
        return serve(stream, slot, here);
    }
    let handoff = match stream.into_std() {
        Ok(stream) => Handoff { stream, slot },
        Err(error) => {
            debug!(%error, "could not hand a connection over");
            return;
        }
    };
    let peer = &common.peers[target];
    peer.open.fetch_add(1, Ordering::Relaxed);
    if let Err(returned) = peer.inbox.send(handoff) {
        // That worker has gone: never choose it again.
        peer.open.store(GONE, Ordering::Relaxed);
        adopt(returned.0, here);
    }
}

/// Where a connection accepted by worker `me` should run: the worker with
/// the fewest open connections when `me` has more than an eighth above
/// that (and at least one more), else `me`. The slack keeps a stream of
/// short connections, whose counts drift up and down by a few, from being
/// handed over half the time (measured: 11 % fewer connections a second
/// without it); kept-alive connections still end within about an eighth
/// of each other.
fn hand_off_to(peers: &[Peer], me: usize) -> usize {
    let open = |peer: &Peer| peer.open.load(Ordering::Relaxed);
    let mine = open(&peers[me]);
    let (mut target, mut fewest) = (me, mine);
    for (i, peer) in peers.iter().enumerate() {
        let count = open(peer);
        if count < fewest {
            (target, fewest) = (i, count);
        }
    }
    if mine > fewest + fewest / 8 {
        target
    } else {
        me
    }
}

/// Serves a connection another worker accepted for this one. This
/// worker's open count was raised when it was chosen; [`serve`] now
/// counts the connection instead.
fn take_over(handoff: Handoff, here: &Here<'_>) {
    here.common.peers[here.index]
        .open
        .fetch_sub(1, Ordering::Relaxed);
    adopt(handoff, here);
}

/// Registers a socket that left another worker's event loop with this one.
fn adopt(handoff: Handoff, here: &Here<'_>) {
    match TcpStream::from_std(handoff.stream) {
        Ok(stream) => serve(stream, handoff.slot, here),
        Err(error) => debug!(%error, "could not take a connection over"),
    }
}

/// Runs a connection on this worker, counted in its open connections
/// until it closes.
fn serve(stream: TcpStream, slot: OwnedSemaphorePermit, here: &Here<'_>) {
    let Ok(tracked) = here.mine.clone().try_acquire_owned() else {
        return;
    };
    let open = Open::new(here.common.clone(), here.index);
    let (common, state, stop) = (here.common.clone(), here.state.clone(), here.stop.clone());
    tokio::spawn(async move {
        let builder = &common.builder;
        let timeouts = common.timeouts;
        match &common.tls {
            None => connection::serve(stream, state, builder, timeouts, stop).await,
            // Boxed, so that a plain connection's task is not sized for
            // a TLS stream it never holds.
            Some(tls) => {
                Box::pin(async {
                    if let Some(stream) = tls_server::accept(tls, stream, &common.registry).await {
                        connection::serve(stream, state, builder, timeouts, stop).await;
                    }
                })
                .await
            }
        }
        drop((slot, tracked, open));
    });
}

/// One of a worker's open connections, for [`hand_off_to`].
struct Open {
    common: Arc<Common>,
    index: usize,
}

impl Open {
    fn new(common: Arc<Common>, index: usize) -> Open {
        common.peers[index].open.fetch_add(1, Ordering::Relaxed);
        Open { common, index }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.common.peers[self.index]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Reloader {
    /// Hands `config`'s users, gateways, limits and timeouts to every
    /// worker, and reloads the listener's certificates. Returns the keys
    /// that changed but only take effect on restart. On error nothing
    /// changed.
    pub fn reload(&self, config: &Config) -> Result<Vec<&'static str>, String> {
        let mut shared = Shared::new(config, self.common.registry.clone())?;
        match (&self.common.tls, &config.tls) {
            (Some(tls), Some(new)) => tls.reload(new)?,
            (None, None) => {}
            _ => return Err("turning TLS on or off needs a restart".into()),
        }

        // What belongs to the process rather than to the settings: where
        // /metrics is served, and, while the limit is the same, the
        // permits of requests in flight, so that a reload never lets
        // twice the limit run at once.
        let old = self.common.shared.borrow().clone();
        shared.metrics_on_main = old.metrics_on_main;
        if shared.limits.max_concurrent_requests == old.limits.max_concurrent_requests {
            shared.in_flight = old.in_flight.clone();
        }

        self.common.shared.send_replace(Arc::new(shared));
        Ok(restart_only_changes(&self.common.started, config))
    }
}

/// Keys whose new value waits for a restart: they shaped the listeners,
/// the connection builder, the logger or the metrics endpoint.
fn restart_only_changes(started: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (started, new);
    let handshake = |c: &Config| c.tls.as_ref().map(|t| t.handshake_timeout);
    [
        ("listen", a.listen != b.listen),
        ("workers", a.workers != b.workers),
        ("tls.handshake_timeout_ms", handshake(a) != handshake(b)),
        (
            "limits.max_connections",
            a.limits.max_connections != b.limits.max_connections,
        ),
        (
            "limits.max_header_count",
            a.limits.max_header_count != b.limits.max_header_count,
        ),
        (
            "limits.max_header_bytes",
            a.limits.max_header_bytes != b.limits.max_header_bytes,
        ),
        (
            "timeouts.request_header_ms",
            a.timeouts.request_header != b.timeouts.request_header,
        ),
        ("timeouts.idle_ms", a.timeouts.idle != b.timeouts.idle),
        (
            "timeouts.shutdown_grace_ms",
            a.timeouts.shutdown_grace != b.timeouts.shutdown_grace,
        ),
        ("log.level", a.log.level != b.log.level),
        ("log.format", a.log.format != b.log.format),
        ("metrics", a.metrics != b.metrics),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Waits until every connection task of this worker has returned its permit.
async fn drain(connections: &Semaphore, max: usize, grace: Duration) {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            open = max - connections.available_permits(),
            "shutdown grace period over; closing remaining connections"
        );
    }
}

/// One listening socket per worker on the same address. The first bind
/// settles the port when `listen` asks for port 0. Unless `reuse_port`,
/// a port that another process listens on is refused, even one that
/// shares with `SO_REUSEPORT` (SPEC.md: a port in use ends start-up).
fn listen_all(
    addr: SocketAddr,
    workers: usize,
    reuse_port: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if !reuse_port && addr.port() != 0 {
        // A socket without SO_REUSEPORT cannot bind beside any listener;
        // it is closed again at once, before gwproxy's own bind.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = listen(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(listen(addr)?);
    }
    Ok(listeners)
}

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Reuse lets a restarted gwproxy bind while old connections sit in
    // TIME_WAIT; reuse-port lets the workers, and with `reuse_port` a new
    // gwproxy during a zero-downtime restart, listen on the same port.
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// How far past `limits.max_header_bytes` hyper reads a request head.
/// service.rs refuses heads over the limit with a JSON `431`; only heads
/// larger still meet hyper's own bare `431`, for there is no request to
/// answer in JSON until hyper has parsed one.
const HEAD_SLACK: usize = 64 * 1024;

/// hyper's read buffer for request heads (and the h2 header list limit):
/// the configured limit plus [`HEAD_SLACK`].
fn head_buffer(max_header_bytes: usize) -> usize {
    max_header_bytes.max(8192) + HEAD_SLACK
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
        // A client may send its request and then shut down its write side
        // (RFC 9112 section 9.6 lets it): it still gets its response.
        .half_close(true)
        .max_buf_size(head_buffer(limits.max_header_bytes));
    // hyper's own limit is 100 headers. Naming a count, even 100, makes it
    // fill a buffer that large on every request head (measured: as much as
    // the parse itself), so only a count other than the default is passed.
    if limits.max_header_count != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.max_header_count);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(
            u32::try_from(head_buffer(limits.max_header_bytes)).unwrap_or(u32::MAX),
        )
        // Bounds CVE-2023-44487 ("rapid reset"): streams reset by the client
        // before gwproxy accepted them stop counting after this many.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_PENDING_RESETS);
    builder
}
