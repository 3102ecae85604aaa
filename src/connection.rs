//! One client connection: HTTP/1.1 or h2 on it, and the timers that bound its life.
//!
//! hyper 1.x has a single HTTP/1 timer that covers both the wait for a
//! request's headers and the idle time between requests. gwproxy wants two
//! (`timeouts.request_header_ms`, short, against slow clients;
//! `timeouts.idle_ms`, long, so load balancers' pooled connections survive),
//! so it watches the connection itself: the I/O wrapper notes when a
//! request head starts to arrive, the service notes when requests begin and
//! end, and a watchdog in the connection task compares those to the clock.

use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::observed_io::{IoObserver, Observed};
use crate::service;
use crate::state::StateCell;

/// The HTTP/2 connection preface (RFC 9113 section 3.4) starts this way:
/// far enough to tell it from any HTTP/1 method, `PUT` and `POST` included.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// How often a connection that has sent nothing yet is looked at during
/// shutdown; only then.
const FIRST_BYTES_POLL: Duration = Duration::from_millis(5);

/// The two client-side timers this module enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// Serves `io` until the client leaves, a timer fires, or shutdown is
/// signalled (then requests in flight finish first).
pub async fn serve<I>(
    io: I,
    state: Arc<StateCell>,
    builder: &auto::Builder<TokioExecutor>,
    timeouts: ConnTimeouts,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(timeouts));
    let io = TokioIo::new(Observed::new(io, activity.clone()));

    let service_activity = activity.clone();
    // The request's future is boxed: hyper keeps room for the service's
    // future in every connection, idle or not, and gwproxy's is large.
    let service = service_fn(move |request| {
        let state = state.load();
        let guard = service_activity.begin_request();
        Box::pin(async move {
            let response = service::handle(&state, request).await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(response)
        })
    });

    let mut conn = pin!(builder.serve_connection(io, service));
    let mut timer = pin!(tokio::time::sleep_until(activity.deadline()));
    let mut draining = false;
    let mut stop_when_started = *shutdown.borrow();
    let mut first_bytes = pin!(tokio::time::sleep(FIRST_BYTES_POLL));
    loop {
        tokio::select! {
            // Polled in this order, not from select!'s random start (which
            // costs a random number on every wake): the connection is what
            // wakes this task nearly every time, and the branches after it
            // are timers and a signal that cannot be starved by it.
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "client connection ended with an error");
                }
                return;
            }
            // The timers keep running while draining: graceful shutdown
            // leaves a connection that is mid-head open, and only the
            // header timer ends it.
            _ = timer.as_mut() => {
                match activity.expired() {
                    Some(Expiry::Header) => {
                        debug!("no complete request head in time; closing the connection");
                        return;
                    }
                    Some(Expiry::Idle) if !draining => {
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                    // Still nothing moved after a polite close: a client
                    // that reads no response (or holds its h2 window at
                    // zero) would otherwise hold it in memory forever.
                    Some(Expiry::Idle) => {
                        debug!("response stalled past the idle timeout; closing the connection");
                        return;
                    }
                    _ => {}
                }
                timer.as_mut().reset(activity.next_check());
            }
            _ = shutdown.changed(), if !draining && !stop_when_started => {
                stop_when_started = true;
            }
            // A connection accepted just before shutdown most likely has
            // its request on the way: closing it before its first byte
            // (which hyper-util does while it tells HTTP/1 from h2) would
            // fail that request, so the close waits for the first bytes,
            // or the header timeout.
            _ = first_bytes.as_mut(), if stop_when_started && !draining => {
                if activity.phase.load(Ordering::Acquire) == FRESH {
                    first_bytes.as_mut().reset(Instant::now() + FIRST_BYTES_POLL);
                } else {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// Where a connection stands, as far as its timers care.
const FRESH: u8 = 0;
const HEAD: u8 = 1;
const IDLE: u8 = 2;
const BUSY: u8 = 3;

#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    /// A request head took longer than `timeouts.request_header_ms`:
    /// close at once, as for any peer that breaks the protocol's pace.
    Header,
    /// Nothing happened for `timeouts.idle_ms`: close politely.
    Idle,
}

/// Shared between the I/O wrapper, the service and the watchdog. Atomics
/// rather than a lock: the service and the I/O may run on different
/// threads for HTTP/2.
#[derive(Debug)]
struct Activity {
    start: Instant,
    phase: AtomicU8,
    /// When the current phase began, in milliseconds since `start`.
    since_ms: AtomicU64,
    in_flight: AtomicU32,
    /// How much of [`H2_PREFACE_START`] a fresh connection has sent so far:
    /// a client may send its first bytes one at a time.
    preface_seen: AtomicU8,
    /// HTTP/2 connections have no per-request head phase: their reads are
    /// frames of any kind, pings included.
    h2: std::sync::atomic::AtomicBool,
    timeouts: ConnTimeouts,
}

impl Activity {
    fn new(timeouts: ConnTimeouts) -> Self {
        Activity {
            start: Instant::now(),
            phase: AtomicU8::new(FRESH),
            since_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            preface_seen: AtomicU8::new(0),
            h2: std::sync::atomic::AtomicBool::new(false),
            timeouts,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.phase.store(BUSY, Ordering::Release);
        RequestGuard(self.clone())
    }

    fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.enter(IDLE);
        }
    }

    /// When the watchdog should look again.
    fn deadline(&self) -> Instant {
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        match self.phase.load(Ordering::Acquire) {
            FRESH | HEAD => self.start + since + self.timeouts.header,
            IDLE => self.start + since + self.timeouts.idle,
            // A request has its own body and gateway timeouts; look again
            // once it could have finished.
            _ => Instant::now() + self.timeouts.header,
        }
    }

    /// [`Activity::deadline`], or a header timeout from now when that has
    /// passed already (an idle connection that is closing).
    fn next_check(&self) -> Instant {
        let now = Instant::now();
        let deadline = self.deadline();
        if deadline > now {
            deadline
        } else {
            now + self.timeouts.header
        }
    }

    fn expired(&self) -> Option<Expiry> {
        let waited = Duration::from_millis(self.now_ms() - self.since_ms.load(Ordering::Relaxed));
        match self.phase.load(Ordering::Acquire) {
            FRESH | HEAD if waited >= self.timeouts.header => Some(Expiry::Header),
            IDLE if waited >= self.timeouts.idle => Some(Expiry::Idle),
            _ => None,
        }
    }
}

impl IoObserver for Activity {
    /// Bytes arrived. On an idle HTTP/1 connection they start a request
    /// head, and its timer.
    fn on_read(&self, bytes: &[u8]) {
        match self.phase.load(Ordering::Acquire) {
            FRESH => self.on_first_bytes(bytes),
            IDLE if !self.h2.load(Ordering::Relaxed) => self.enter(HEAD),
            _ => {}
        }
    }

    /// A response is still moving: an idle connection is not idle yet.
    fn on_write(&self, _written: usize) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

impl Activity {
    /// Tells an h2 preface from an HTTP/1 head, however the first bytes
    /// are split across reads. Until it is told the connection stays
    /// FRESH, timed by the header timeout from its accept.
    fn on_first_bytes(&self, bytes: &[u8]) {
        let seen = usize::from(self.preface_seen.load(Ordering::Relaxed));
        let expected = &H2_PREFACE_START[seen..];
        let n = bytes.len().min(expected.len());
        if bytes[..n] != expected[..n] {
            // Keep the accept time: the first head is timed from it.
            self.phase.store(HEAD, Ordering::Release);
        } else if n == expected.len() {
            self.h2.store(true, Ordering::Relaxed);
            self.enter(IDLE);
        } else {
            self.preface_seen.store((seen + n) as u8, Ordering::Relaxed);
        }
    }
}

/// Marks a request finished even when its future is dropped (the client
/// went away mid-request).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Arc<Activity> {
        Arc::new(Activity::new(ConnTimeouts {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_connection_must_send_a_head_in_time() {
        let a = activity();
        assert_eq!(a.expired(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read(b"GET / HT");
        assert_eq!(a.expired(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.expired(), Some(Expiry::Header));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_sent_a_byte_at_a_time_is_not_taken_for_h2() {
        let a = activity();
        for byte in b"PR" {
            a.on_read(&[*byte]);
        }
        assert!(!a.h2.load(Ordering::Relaxed));
        a.on_read(b"OST / HTTP/1.1\r\n");
        assert!(!a.h2.load(Ordering::Relaxed));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(a.expired(), Some(Expiry::Header));
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_split_across_reads_is_h2() {
        let a = activity();
        a.on_read(b"PRI * ");
        a.on_read(b"HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(a.h2.load(Ordering::Relaxed));
        assert_eq!(a.phase.load(Ordering::Acquire), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_keep_an_idle_connection_alive() {
        let a = activity();
        a.on_read(b"GET / HTTP/1.1\r\n\r\n");
        drop(a.begin_request());
        tokio::time::advance(Duration::from_secs(50)).await;
        a.on_write(4096);
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(a.expired(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(a.expired(), Some(Expiry::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keep_alive_outlasts_the_header_timeout() {
        let a = activity();
        a.on_read(b"GET / HTTP/1.1\r\n\r\n");
        drop(a.begin_request());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.expired(), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.expired(), Some(Expiry::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn next_head_on_a_kept_alive_connection_is_timed_from_its_first_byte() {
        let a = activity();
        drop(a.begin_request());
        tokio::time::advance(Duration::from_secs(40)).await;
        a.on_read(b"G");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.expired(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.expired(), Some(Expiry::Header));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_never_expires_and_h2_reads_do_not_start_heads() {
        let a = activity();
        a.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let guard = a.begin_request();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(a.expired(), None);
        drop(guard);
        a.on_read(b"\x00\x00\x08\x06");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(a.expired(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.expired(), Some(Expiry::Idle));
    }
}
