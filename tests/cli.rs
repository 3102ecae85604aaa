//! Black-box tests of the `gwproxy` command line: flags, `--check-config`,
//! and start-up failures (SPEC.md, "Command line" and "Config file").

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// Long enough for a debug build on a busy machine; a hang still fails.
const WITHIN: Duration = Duration::from_secs(20);
const PLAIN_SECRET: &str = "plain-text-hunter2-secret";
/// SHA-256 of `abc` (FIPS 180-2's example).
const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// What a finished run printed.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn gwproxy() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gwproxy"));
    command
        .env_remove("GWPROXY_CONFIG")
        .env_remove("GWPROXY_SECRET")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs to completion; a run that outlives [`WITHIN`] is killed by its PID
/// and fails the test.
fn run(mut command: Command) -> Output {
    let child = command.spawn().expect("spawn gwproxy");
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(WITHIN) {
        Ok(output) => {
            let output = output.expect("wait for gwproxy");
            Output {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("gwproxy (pid {pid}) did not exit within {WITHIN:?}");
        }
    }
}

/// A config file that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn with(text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("gwproxy-cli-{}-{n}.json", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).expect("write config");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn valid_config(listen: &str) -> Value {
    json!({
        "listen": listen,
        "users": [{ "name": "ops", "org_id": "acme", "secret": PLAIN_SECRET }],
        "gateways": [{ "url": "http://127.0.0.1:8181" }],
        "limits": { "max_request_body_bytes": 4096 },
        "timeouts": { "connect_ms": 1000 },
        "pool": { "max_idle_per_gateway": 4 },
    })
}

/// Four distinct problems, one of them next to a plain secret.
fn broken_config() -> Value {
    json!({
        "listen": "not-an-address",
        "users": [{
            "name": "ops",
            "secret": PLAIN_SECRET,
            "secret_sha256": ABC_SHA256,
        }],
        "gateways": [{ "url": "http://127.0.0.1:8181" }, { "url": "ftp://127.0.0.1/x" }],
        "limits": { "max_bodyy": 10 },
    })
}

const BROKEN_PATHS: [&str; 4] = ["listen", "users[0]", "gateways[1].url", "limits.max_bodyy"];

fn assert_no_panic(output: &Output) {
    let all = output.both();
    assert!(!all.contains("panicked"), "{all}");
    assert!(!all.contains("RUST_BACKTRACE"), "{all}");
}

/// The start-up failure is exactly one line on stderr.
fn one_stderr_line(output: &Output) -> &str {
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {:?}", output.stderr);
    lines[0]
}

#[test]
fn version_prints_name_and_version() {
    let mut command = gwproxy();
    command.arg("--version");
    let output = run(command);

    assert_eq!(output.code, Some(0), "{}", output.both());
    let expected = format!("gwproxy {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(output.stdout.trim_end(), expected);
}

#[test]
fn help_exits_0_and_mentions_check_config() {
    let mut command = gwproxy();
    command.arg("--help");
    let output = run(command);

    assert_eq!(output.code, Some(0), "{}", output.both());
    assert!(
        output.stdout.contains("--check-config"),
        "{}",
        output.stdout
    );
    assert!(output.stdout.contains("--config"), "{}", output.stdout);
}

#[test]
fn unknown_or_incomplete_arguments_exit_2() {
    for args in [
        &["--frobnicate"][..],
        &["--confg", "x.json"],
        &["--config"],
        &["serve"],
    ] {
        let mut command = gwproxy();
        command.args(args);
        let output = run(command);
        assert_eq!(output.code, Some(2), "{args:?}: {}", output.both());
        assert!(!output.stderr.is_empty(), "{args:?} says nothing");
        assert_no_panic(&output);
    }
}

#[test]
fn check_config_accepts_a_valid_file() {
    let file = TempFile::with(&valid_config("127.0.0.1:0").to_string());
    let mut command = gwproxy();
    command
        .arg("--check-config")
        .arg("--config")
        .arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(0), "{}", output.both());
    assert!(!output.both().contains(PLAIN_SECRET));
}

#[test]
fn check_config_names_every_problem_and_never_the_secret() {
    let file = TempFile::with(&broken_config().to_string());
    let mut command = gwproxy();
    command
        .arg("--config")
        .arg(file.path())
        .arg("--check-config");
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let all = output.both();
    for path in BROKEN_PATHS {
        let named = all.lines().any(|line| line.contains(path));
        assert!(named, "{path} not named in {all}");
    }
    assert!(!all.contains(PLAIN_SECRET), "{all}");
    assert!(!all.contains(ABC_SHA256), "{all}");
    assert_no_panic(&output);
}

#[test]
fn check_config_without_a_file_exits_2() {
    let mut command = gwproxy();
    command.arg("--check-config");
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    assert!(output.both().contains("--config"), "{}", output.both());
}

#[test]
fn starting_with_a_bad_config_is_one_line_naming_the_key() {
    let mut config = valid_config("127.0.0.1:0");
    config["limits"]["max_bodyy"] = json!(10);
    let file = TempFile::with(&config.to_string());
    let mut command = gwproxy();
    command.arg("--config").arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains("limits.max_bodyy"), "{line}");
    assert_no_panic(&output);
}

#[test]
fn starting_with_several_problems_names_them_all_on_one_line() {
    let file = TempFile::with(&broken_config().to_string());
    let mut command = gwproxy();
    command.arg("--config").arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    for path in BROKEN_PATHS {
        assert!(line.contains(path), "{path} not in {line}");
    }
    assert!(!output.both().contains(PLAIN_SECRET));
    assert_no_panic(&output);
}

#[test]
fn starting_with_a_file_that_is_not_json_names_the_file() {
    let file = TempFile::with("{ \"listen\": ");
    let mut command = gwproxy();
    command.arg("--config").arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains(&file.path().display().to_string()), "{line}");
    assert_no_panic(&output);
}

#[test]
fn a_missing_config_file_exits_2_naming_the_file() {
    let missing = std::env::temp_dir().join(format!("gwproxy-absent-{}.json", std::process::id()));
    let mut command = gwproxy();
    command.arg("--config").arg(&missing);
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert_no_panic(&output);
}

#[test]
fn a_port_in_use_exits_2_naming_listen() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let file = TempFile::with(&valid_config(&addr.to_string()).to_string());
    let mut command = gwproxy();
    command.arg("--config").arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains("listen"), "{line}");
    assert!(line.contains(&addr.to_string()), "{line}");
    assert_no_panic(&output);
    drop(taken);
}

/// A second gwproxy on a port the first listens on fails start-up, though
/// both sockets set SO_REUSEPORT; with `reuse_port` on both it binds
/// beside the first (the zero-downtime restart, tests/multi_instance.rs).
#[test]
fn a_port_another_gwproxy_listens_on_is_in_use_unless_reuse_port() {
    for reuse in [false, true] {
        let mut config = valid_config("127.0.0.1:0");
        config["reuse_port"] = json!(reuse);
        let first_file = TempFile::with(&config.to_string());
        let mut command = gwproxy();
        command.arg("--config").arg(first_file.path());
        let mut first = Running(command.spawn().expect("spawn gwproxy"));
        let addr = listening_addr(&mut first.0);

        config["listen"] = json!(addr.to_string());
        let second_file = TempFile::with(&config.to_string());
        let mut command = gwproxy();
        command.arg("--config").arg(second_file.path());
        if reuse {
            let mut second = Running(command.spawn().expect("spawn gwproxy"));
            assert_eq!(listening_addr(&mut second.0), addr);
            continue;
        }
        let output = run(command);
        assert_eq!(output.code, Some(2), "{}", output.both());
        let line = one_stderr_line(&output);
        assert!(
            line.contains("listen") && line.contains(&addr.to_string()),
            "{line}"
        );
        assert_no_panic(&output);
    }
}

/// A mistyped override must not leave a limit at its default unnoticed.
#[test]
fn a_mistyped_override_variable_exits_2_naming_it() {
    let file = TempFile::with(&valid_config("127.0.0.1:0").to_string());
    let mut command = gwproxy();
    command
        .env("GWPROXY_TIMEOUTS_RESPONSE_M", "5")
        .arg("--config")
        .arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains("GWPROXY_TIMEOUTS_RESPONSE_M"), "{line}");
}

#[test]
fn check_config_reads_the_certificate_and_ca_files() {
    let missing = std::env::temp_dir().join(format!("gwproxy-check-{}.pem", std::process::id()));
    let mut config = valid_config("127.0.0.1:0");
    config["tls"] = json!({ "cert_file": missing, "key_file": missing });
    config["gateways"] = json!([
        { "url": "http://127.0.0.1:8181" },
        { "url": "https://127.0.0.1:8443", "ca_file": missing },
    ]);
    let file = TempFile::with(&config.to_string());
    let mut command = gwproxy();
    command
        .arg("--check-config")
        .arg("--config")
        .arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let file = missing.display().to_string();
    assert!(
        lines[0].starts_with("tls: ") && lines[0].contains(&file),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("gateways[1]: ") && lines[1].contains(&file),
        "{lines:?}"
    );
}

#[test]
fn gwproxy_config_variable_names_a_missing_file() {
    let missing = std::env::temp_dir().join(format!("gwproxy-env-{}.json", std::process::id()));
    let mut command = gwproxy();
    command.env("GWPROXY_CONFIG", &missing);
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains(&missing.display().to_string()), "{line}");
}

#[test]
fn a_missing_listener_certificate_exits_2_naming_the_file() {
    let missing = std::env::temp_dir().join(format!("gwproxy-cert-{}.pem", std::process::id()));
    let mut config = valid_config("127.0.0.1:0");
    config["tls"] = json!({ "cert_file": missing, "key_file": missing });
    let file = TempFile::with(&config.to_string());
    let mut command = gwproxy();
    command.arg("--config").arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert_no_panic(&output);
}

#[test]
fn a_missing_gateway_ca_file_exits_2_naming_the_file() {
    let missing = std::env::temp_dir().join(format!("gwproxy-ca-{}.pem", std::process::id()));
    let mut config = valid_config("127.0.0.1:0");
    config["gateways"] = json!([{ "url": "https://127.0.0.1:8443", "ca_file": missing }]);
    let file = TempFile::with(&config.to_string());
    let mut command = gwproxy();
    command.arg("--config").arg(file.path());
    let output = run(command);

    assert_eq!(output.code, Some(2), "{}", output.both());
    let line = one_stderr_line(&output);
    assert!(line.contains(&missing.display().to_string()), "{line}");
}

/// A running server, killed by its own PID when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the "gwproxy listening addr=…" line on stderr.
fn listening_addr(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().expect("stderr piped");
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Some(start) = line.find("addr=") else {
                continue;
            };
            let word = line[start + 5..].split_whitespace().next().unwrap_or("");
            if let (true, Ok(addr)) = (line.contains("listening"), word.parse()) {
                let _ = addr_tx.send(addr);
            }
        }
    });
    addr_rx
        .recv_timeout(WITHIN)
        .expect("gwproxy logged its address")
}

/// `GET /hello` over a plain socket; returns the whole answer.
fn hello(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    let request = format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    answer
}

#[test]
fn gwproxy_config_variable_works_like_the_flag() {
    let file = TempFile::with(&valid_config("127.0.0.1:0").to_string());
    let mut command = gwproxy();
    command
        .env("GWPROXY_CONFIG", file.path())
        .stdout(Stdio::null());
    let mut server = Running(command.spawn().expect("spawn gwproxy"));

    let addr = listening_addr(&mut server.0);

    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 3000, "the built-in default was used");
    let answer = hello(addr);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""status":"ok""#), "{answer}");
    assert!(server.0.try_wait().unwrap().is_none(), "gwproxy exited");
}
