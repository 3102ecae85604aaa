//! Several gwproxy instances as operators run them: two on one port
//! (`SO_REUSEPORT`) while one restarts, and two behind HAProxy while one
//! stops. Under continuous load, no client request may fail.
//!
//! The HAProxy test runs `tests/deploy/haproxy.cfg.example` itself, with
//! loopback ports and fast health checks; it fails when HAProxy is not
//! installed (`.ci/run` installs it).

mod common;

use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{block_in_place, JoinHandle};

use common::{raw_upstream, Gwproxy, SECRET};

/// Concurrent clients driving the load through HAProxy.
const HAPROXY_CLIENTS: usize = 8;
/// Concurrent clients on the shared port, each opening a connection per
/// request: the more connections arrive, the likelier one races a stop.
const SHARED_PORT_CLIENTS: usize = 16;
/// Zero-downtime restarts in a row on the shared port.
const RESTARTS: usize = 3;
/// The gateway's answer time: long enough that a stopping instance has
/// requests in flight when the signal arrives.
const GATEWAY_DELAY: Duration = Duration::from_millis(20);
/// No single request may take longer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopped instance may take to drain 20 ms requests and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);
/// `timeouts.shutdown_grace_ms`: far above what a drain should need.
const GRACE_MS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_on_the_same_port_takes_over_while_the_first_drains() {
    let _migrate = MigrateRequests::enable();
    let (gateway, served) = slow_gateway(GATEWAY_DELAY).await;
    let listen = free_loopback_addr();
    let config = instance_config(gateway, listen);
    let mut old = block_in_place(|| Gwproxy::start(config.clone()));
    assert_eq!(old.addr, listen);

    let load = Load::start(
        listen,
        SHARED_PORT_CLIENTS,
        ClientKind::FreshConnections,
        gateway,
    );
    load.wait_for_successes(20).await;

    // Each round is one zero-downtime restart: a new instance binds the
    // same port, then the old one is told to stop while both take
    // connections. The race is narrow, so it is run a few times.
    let mut stops = Vec::new();
    for round in 1..=RESTARTS {
        let new = block_in_place(|| Gwproxy::start(config.clone()));
        assert_eq!(new.addr, listen);
        tokio::time::sleep(Duration::from_millis(300)).await;
        old.signal("TERM");
        stops.push(Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;

        let code = block_in_place(|| old.wait_exit(EXIT_DEADLINE));
        assert_eq!(
            code,
            Some(0),
            "round {round}, old instance's stderr:\n{}",
            old.stderr()
        );
        let served_at_exit = served.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            served.load(Ordering::SeqCst) > served_at_exit,
            "round {round}: no request reached the gateway after the old instance exited"
        );
        old = new;
    }
    let tally = load.stop().await;

    tally.assert_no_failures(&stops, "on the shared port", "");
    for _ in 0..5 {
        let (status, body) = old.proxy(proxy_request(gateway)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_moves_traffic_to_the_other_instance_when_one_stops() {
    let (gateway, served) = slow_gateway(GATEWAY_DELAY).await;
    let loopback_any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut first = block_in_place(|| Gwproxy::start(instance_config(gateway, loopback_any_port)));
    let second = block_in_place(|| Gwproxy::start(instance_config(gateway, loopback_any_port)));

    let front = free_loopback_addr();
    let mut haproxy = HaProxy::start(&haproxy_config(front, [first.addr, second.addr]));
    haproxy.wait_until_serving(front).await;

    let load = Load::start(front, HAPROXY_CLIENTS, ClientKind::Mixed, gateway);
    load.wait_for_successes(50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    first.signal("TERM");
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let code = block_in_place(|| first.wait_exit(EXIT_DEADLINE));
    let served_at_exit = served.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;

    let log = haproxy.output();
    let log_note = format!("HAProxy's log:\n{log}");
    tally.assert_no_failures(&[stopped_at], "through HAProxy", &log_note);
    assert_eq!(
        code,
        Some(0),
        "stopped instance's stderr:\n{}",
        first.stderr()
    );
    assert!(
        served.load(Ordering::SeqCst) > served_at_exit,
        "no request reached the gateway after the instance exited; HAProxy's log:\n{log}"
    );
    for server in ["gwproxy/gw1", "gwproxy/gw2"] {
        assert!(log.contains(server), "{server} served nothing:\n{log}");
    }
    assert!(haproxy.is_running(), "HAProxy exited:\n{log}");
}

/// `net.ipv4.tcp_migrate_req=1` for the test's life, as README "Running
/// many instances" tells operators: a closing listener hands connections
/// still in its accept queue to another one on the port instead of
/// resetting them. gwproxy takes its own backlog before it closes; the
/// sysctl covers the few that arrive in between. Where the test may not
/// set it (not root), it runs without it.
struct MigrateRequests(Option<String>);

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

impl MigrateRequests {
    fn enable() -> MigrateRequests {
        let before = std::fs::read_to_string(MIGRATE_REQ).ok();
        match std::fs::write(MIGRATE_REQ, "1") {
            Ok(()) => MigrateRequests(before),
            Err(error) => {
                eprintln!("cannot set {MIGRATE_REQ} ({error}); running without it");
                MigrateRequests(None)
            }
        }
    }
}

impl Drop for MigrateRequests {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = std::fs::write(MIGRATE_REQ, before.trim());
        }
    }
}

/// One instance's config: the test user, the gateway, two workers.
fn instance_config(gateway: SocketAddr, listen: SocketAddr) -> Value {
    Gwproxy::config(
        &[&format!("http://{gateway}")],
        json!({
            "listen": listen.to_string(),
            "workers": 2,
            // The zero-downtime restart binds a second instance beside the first.
            "reuse_port": true,
            "timeouts": { "shutdown_grace_ms": GRACE_MS },
        }),
    )
}

fn proxy_request(gateway: SocketAddr) -> Value {
    json!({ "method": "GET", "url": format!("http://{gateway}/restart"), "headers": {"test": "tyk"} })
}

/// A loopback port that was free a moment ago.
fn free_loopback_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("probe address")
}

/// A gateway that answers every request with a small JSON body after
/// `delay`, counting the answers.
async fn slow_gateway(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let addr = raw_upstream(move |stream| {
        let count = count.clone();
        async move {
            let service = service_fn(move |_: Request<Incoming>| {
                let count = count.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    count.fetch_add(1, Ordering::SeqCst);
                    let response = Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from_static(br#"{"ok":true}"#)));
                    Ok::<_, Infallible>(response.expect("static response"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
    (addr, served)
}

/// How a load client uses connections.
#[derive(Clone, Copy)]
enum ClientKind {
    /// A new connection for every request: the kernel picks a listener
    /// each time, so a stopping instance keeps receiving some until its
    /// listening sockets close.
    FreshConnections,
    /// Half the clients keep one connection open, half open a new one per
    /// request.
    Mixed,
}

/// Continuous `POST /api/proxy` load from concurrent tasks until stopped.
struct Load {
    stop: watch::Sender<bool>,
    tally: Arc<Tally>,
    clients: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<(Instant, String)>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, kind: ClientKind, gateway: SocketAddr) -> Load {
        let (stop, stopped) = watch::channel(false);
        let tally = Arc::new(Tally::default());
        let body = Bytes::from(proxy_request(gateway).to_string());
        let clients = (0..clients)
            .map(|i| {
                let keep_alive = matches!(kind, ClientKind::Mixed) && i % 2 == 0;
                let client = client(
                    addr,
                    keep_alive,
                    body.clone(),
                    stopped.clone(),
                    tally.clone(),
                );
                tokio::spawn(client)
            })
            .collect();
        Load {
            stop,
            tally,
            clients,
        }
    }

    /// Waits until `n` requests have succeeded, so that the load is
    /// running before anything is stopped.
    async fn wait_for_successes(&self, n: usize) {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        while self.tally.ok.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the load did not get going: {:?}",
                self.tally.failures.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Arc<Tally> {
        let _ = self.stop.send(true);
        for client in self.clients {
            let finished = tokio::time::timeout(REQUEST_DEADLINE * 2, client).await;
            finished
                .expect("a load client stopped in time")
                .expect("a load client did not panic");
        }
        self.tally
    }
}

impl Tally {
    /// Fails listing the first failures, each timed from the latest
    /// SIGTERM before it (or the first one).
    fn assert_no_failures(&self, stops: &[Instant], route: &str, note: &str) {
        let ok = self.ok.load(Ordering::SeqCst);
        let failures = self.failures.lock().unwrap();
        let listed: Vec<String> = failures
            .iter()
            .take(20)
            .map(|(at, what)| {
                let n = stops.iter().rposition(|stop| stop <= at).unwrap_or(0);
                let from = signed_secs(stops[n], *at);
                format!("{from:+.3}s after SIGTERM {}: {what}", n + 1)
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed {route}:\n{}\n{note}",
            failures.len(),
            ok + failures.len(),
            listed.join("\n")
        );
        assert!(ok >= 100, "only {ok} requests in the whole run");
    }
}

fn signed_secs(origin: Instant, at: Instant) -> f64 {
    if at >= origin {
        (at - origin).as_secs_f64()
    } else {
        -(origin - at).as_secs_f64()
    }
}

/// One load client: requests back to back until told to stop.
async fn client(
    addr: SocketAddr,
    keep_alive: bool,
    body: Bytes,
    stop: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while !*stop.borrow() {
        // A kept-alive connection the server closed while idle is simply
        // replaced, as any HTTP client does; a request in flight is not.
        if connection.as_ref().is_some_and(SendRequest::is_closed) {
            connection = None;
        }
        let attempt = async {
            let sender = match &mut connection {
                Some(sender) => sender,
                None => connection.insert(open(addr).await?),
            };
            post(sender, body.clone()).await
        };
        let result = tokio::time::timeout(REQUEST_DEADLINE, attempt).await;
        let result = result.unwrap_or_else(|_| Err(format!("no answer in {REQUEST_DEADLINE:?}")));
        if result.is_err() || !keep_alive {
            connection = None;
        }
        match result {
            Ok(()) => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(what) => tally.failures.lock().unwrap().push((Instant::now(), what)),
        }
    }
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One `POST /api/proxy`; anything but a 200 envelope of the gateway's 200
/// is a failure, described.
async fn post(sender: &mut SendRequest<Full<Bytes>>, body: Bytes) -> Result<(), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection unusable: {}", chain(&e)))?;
    let request = Request::post("/api/proxy")
        .header(header::HOST, "gwproxy")
        .header(header::AUTHORIZATION, SECRET)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {}", chain(&e)))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{status} body cut: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    if status != StatusCode::OK {
        return Err(format!("{status}: {text}"));
    }
    let envelope: Value =
        serde_json::from_slice(&bytes).map_err(|_| format!("not JSON: {text}"))?;
    if envelope["status_code"] != 200 || envelope["body"] != json!({ "ok": true }) {
        return Err(format!("unexpected envelope: {text}"));
    }
    Ok(())
}

/// An error and its causes: hyper's "connection error" alone does not say
/// whether the peer reset or closed.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The README's HAProxy example with the test's loopback ports and health
/// checks fast enough for a short test (every 200 ms, down at the first
/// failure).
fn haproxy_config(front: SocketAddr, servers: [SocketAddr; 2]) -> String {
    let mut config = include_str!("deploy/haproxy.cfg.example").to_string();
    let edits = [
        ("bind :3000", format!("bind {front}")),
        (
            "server gw1 127.0.0.1:3001",
            format!("server gw1 {}", servers[0]),
        ),
        (
            "server gw2 127.0.0.1:3002",
            format!("server gw2 {}", servers[1]),
        ),
        (
            "inter 2s fall 2 rise 2",
            "inter 200ms fall 1 rise 1".to_string(),
        ),
    ];
    for (from, to) in edits {
        assert!(config.contains(from), "the HAProxy example lost `{from}`");
        config = config.replace(from, &to);
    }
    config
}

/// HAProxy in the foreground (`-db`), its output in a file. Killed by its
/// own PID when dropped.
struct HaProxy {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl HaProxy {
    fn start(config: &str) -> HaProxy {
        let binary = find_haproxy();
        let config_path = common::temp_path("haproxy.cfg");
        std::fs::write(&config_path, config).expect("write the HAProxy config");
        let log_path = common::temp_path("haproxy.log");
        let log = File::create(&log_path).expect("create the HAProxy log");

        let child = Command::new(binary)
            .arg("-f")
            .arg(&config_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        HaProxy {
            child,
            config: config_path,
            log: log_path,
        }
    }

    /// Waits until a health check request through HAProxy answers 200.
    async fn wait_until_serving(&mut self, front: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(self.is_running(), "HAProxy exited:\n{}", self.output());
            let hello = tokio::time::timeout(Duration::from_secs(1), get_hello(front)).await;
            if let Ok(Ok(StatusCode::OK)) = hello {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not serve /hello within 10 s ({hello:?}):\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn get_hello(addr: SocketAddr) -> Result<StatusCode, String> {
    let mut sender = open(addr).await?;
    let request = Request::get("/hello")
        .header(header::HOST, "gwproxy")
        .body(Full::default())
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}

/// `haproxy` on the PATH or in the sbin directories Debian installs it to.
fn find_haproxy() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "HAProxy is not installed: this test runs it in front of two gwproxy \
                 instances (`.ci/run` installs it: apt-get install haproxy)"
            )
        })
}
