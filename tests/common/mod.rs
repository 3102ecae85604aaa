//! Test harness: a real gwproxy process, real upstream servers and clients on loopback.

#![allow(dead_code)]

pub mod ops;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

pub const SECRET: &str = "test-secret-0123456789";

/// A running gwproxy binary. Killed (by its own PID) when dropped.
pub struct Gwproxy {
    child: Child,
    pub addr: SocketAddr,
    config_path: PathBuf,
    stderr_lines: Arc<Mutex<Vec<String>>>,
}

impl Gwproxy {
    /// A config with one user (secret [`SECRET`]) and the given gateways;
    /// `extra` is merged in at the top level.
    pub fn config(gateways: &[&str], extra: Value) -> Value {
        let gateways: Vec<Value> = gateways.iter().map(|url| json!({ "url": url })).collect();
        let mut config = json!({
            "listen": "127.0.0.1:0",
            "users": [{ "name": "tester", "org_id": "acme", "secret": SECRET }],
            "gateways": gateways,
        });
        if let (Some(base), Value::Object(extra)) = (config.as_object_mut(), extra) {
            base.extend(extra);
        }
        config
    }

    /// Starts gwproxy and waits until it logs its listening address.
    pub fn start(config: Value) -> Gwproxy {
        Gwproxy::start_with_env(config, &[])
    }

    /// [`Gwproxy::start`] with extra environment variables (`GWPROXY_<KEY>`
    /// overrides).
    pub fn start_with_env(config: Value, vars: &[(&str, &str)]) -> Gwproxy {
        let config_path = temp_path("json");
        std::fs::write(&config_path, config.to_string()).expect("write config");

        let mut child = Command::new(env!("CARGO_BIN_EXE_gwproxy"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "gwproxy=info")
            .env_remove("GWPROXY_CONFIG")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gwproxy");

        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = addr_tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });

        let addr = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("gwproxy did not start: {:?}", lines.lock().unwrap());
            }
        };
        Gwproxy {
            child,
            addr,
            config_path,
            stderr_lines: lines,
        }
    }

    /// The config file it was started with; rewrite it and send `HUP` to reload.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) to this process only.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// `POST /api/proxy` with the test secret.
    pub async fn proxy(&self, request: Value) -> (StatusCode, Value) {
        let body = request.to_string();
        let (status, _, bytes) = send(
            self.addr,
            Method::POST,
            "/api/proxy",
            &[("authorization", SECRET)],
            body.into_bytes(),
        )
        .await;
        (status, parse_json(&bytes))
    }
}

impl Drop for Gwproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Parses the address out of gwproxy's "gwproxy listening addr=…" line,
/// or out of its JSON form when `log.format` is `json`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("gwproxy listening") {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["fields"]["addr"].as_str()?.parse().ok();
    }
    let start = line.find("addr=")? + "addr=".len();
    let rest = &line[start..];
    rest.split_whitespace().next()?.parse().ok()
}

pub fn temp_path(ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("gwproxy-test-{}-{n}.{ext}", std::process::id()))
}

pub fn parse_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(bytes)))
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect to gwproxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);

    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
        .await
        .expect("gwproxy answered in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(&Received) -> Response<Full<Bytes>> + Send + Sync>;

/// A real HTTP/1.1 server on loopback that records what it receives and
/// counts the connections it accepts.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(
        handler: impl Fn(&Received) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(handler);

        let (log, count) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (log, handler) = (log.clone(), handler.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, handler) = (log.clone(), handler.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Received {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let response = handler(&seen);
                            log.lock().unwrap().push(seen);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            received,
            connections,
        }
    }

    /// An upstream that answers every request with `status`, `content_type` and `body`.
    pub async fn fixed(status: u16, content_type: &'static str, body: &'static [u8]) -> Upstream {
        Upstream::start(move |_| {
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from_static(body)))
                .unwrap()
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// A TCP server on loopback whose every connection is handed to `behave`:
/// for gateways that stall, reset, or send garbage.
pub async fn raw_upstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw upstream");
    let addr = listener.local_addr().unwrap();
    let behave = Arc::new(behave);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(behave(stream));
        }
    });
    addr
}

/// A loopback address on which nothing listens.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
