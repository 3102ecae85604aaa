//! One gateway's multiplexed HTTP/2 connections: which has a free stream, and when to open another.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use tokio::sync::Notify;

use crate::pool::Body;

/// The h2 connections to one gateway.
///
/// A server refuses streams beyond its `SETTINGS_MAX_CONCURRENT_STREAMS`
/// (RFC 9113 section 5.1.2), and hyper would hold such requests back until
/// one ends; so each connection carries at most `max_streams` requests at
/// once, and past that gwproxy opens another. A request that finds every
/// connection full waits for one being opened while that one still has
/// room for it, so that a burst opens as few connections as it needs
/// rather than one per request.
#[derive(Debug)]
pub struct H2Conns {
    /// Whether the gateway's newest connection negotiated h2: read without
    /// the lock so that an HTTP/1.1 gateway's checkout never takes it.
    speaks_h2: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a connection is added or an opening ends.
    changed: Notify,
    max_streams: usize,
}

#[derive(Debug, Default)]
struct State {
    conns: Vec<Conn>,
    /// Connections being opened, each with room for `max_streams` requests.
    opening: usize,
    /// Requests waiting for one of those.
    waiting: usize,
}

#[derive(Debug)]
struct Conn {
    sender: SendRequest<Body>,
    streams: Arc<AtomicUsize>,
    last_used: Instant,
}

/// A request's stream on a connection; given back when dropped.
#[derive(Debug)]
pub struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection this request is opening. Dropping it ends the opening,
/// whether the connection was added, turned out HTTP/1.1 or failed, and
/// wakes the requests waiting for it.
#[derive(Debug)]
pub struct Opening<'a>(&'a H2Conns);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.lock().opening -= 1;
        self.0.changed.notify_waiters();
    }
}

/// Counts a request among the waiting until it stops waiting.
struct Waiting<'a>(&'a H2Conns);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// What a checkout found.
#[derive(Debug)]
pub enum Checkout<'a> {
    /// A stream on a live connection.
    Ready(SendRequest<Body>, Stream),
    /// Every connection is full: the caller opens one and hands it to
    /// [`H2Conns::add`].
    Open(Opening<'a>),
    /// The gateway is not known to speak h2.
    NotH2,
}

impl H2Conns {
    pub fn new(max_streams: usize) -> H2Conns {
        H2Conns {
            speaks_h2: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            max_streams: max_streams.max(1),
        }
    }

    /// A stream on a connection with room, or the duty to open one.
    pub async fn checkout(&self) -> Checkout<'_> {
        loop {
            if !self.speaks_h2.load(Ordering::Relaxed) {
                return Checkout::NotH2;
            }
            let (changed, _waiting) = {
                let mut state = self.lock();
                if let Some((sender, stream)) = state.take_stream(self.max_streams) {
                    return Checkout::Ready(sender, stream);
                }
                // Each connection being opened serves its opener and
                // max_streams - 1 waiting requests.
                if state.waiting >= state.opening * (self.max_streams - 1) {
                    state.opening += 1;
                    return Checkout::Open(Opening(self));
                }
                state.waiting += 1;
                // Created under the lock, so no notification between the
                // check above and the wait below is missed.
                (self.changed.notified(), Waiting(self))
            };
            changed.await;
        }
    }

    /// Adds the connection this request opened, with the request's stream
    /// on it.
    pub fn add(&self, sender: SendRequest<Body>, opening: Option<Opening<'_>>) -> Stream {
        let streams = Arc::new(AtomicUsize::new(1));
        let mut state = self.lock();
        state.conns.push(Conn {
            sender,
            streams: streams.clone(),
            last_used: Instant::now(),
        });
        self.speaks_h2.store(true, Ordering::Relaxed);
        drop(state);
        drop(opening);
        Stream(streams)
    }

    /// The gateway's newest connection negotiated HTTP/1.1: requests stop
    /// waiting for h2 connections and use the HTTP/1.1 pool.
    pub fn speaks_http1(&self, opening: Option<Opening<'_>>) {
        self.speaks_h2.store(false, Ordering::Relaxed);
        drop(opening);
    }

    /// Closes connections that carried nothing for `idle_timeout`, and
    /// forgets those the gateway closed.
    pub fn evict_idle(&self, idle_timeout: Duration) {
        self.lock().conns.retain(|conn| {
            !conn.sender.is_closed()
                && (conn.streams.load(Ordering::Relaxed) > 0
                    || conn.last_used.elapsed() < idle_timeout)
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to State is a single push, retain or count, so a
        // panic elsewhere cannot leave it half-made: a poisoned lock is
        // still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// A stream on the first live connection with room for one.
    fn take_stream(&mut self, max_streams: usize) -> Option<(SendRequest<Body>, Stream)> {
        self.conns.retain(|conn| !conn.sender.is_closed());
        let conn = self
            .conns
            .iter_mut()
            .find(|conn| conn.streams.load(Ordering::Relaxed) < max_streams)?;
        conn.streams.fetch_add(1, Ordering::Relaxed);
        conn.last_used = Instant::now();
        Some((conn.sender.clone(), Stream(conn.streams.clone())))
    }
}
