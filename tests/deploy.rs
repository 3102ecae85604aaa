//! The deployment files in tests/deploy/: the systemd unit passes
//! `systemd-analyze verify` and is rated well hardened, and the HAProxy
//! example is a valid configuration.
//!
//! Both tools are installed by `.ci/run`; a test fails, never skips, when
//! one is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("deploy/gwproxy.service");
const UNIT_NAME: &str = "gwproxy.service";
const INSTALLED_BINARY: &str = "/usr/local/bin/gwproxy";

/// `systemd-analyze security` rates exposure from 0 (locked down) to 10;
/// up to 2.0 it calls a service "OK".
const MAX_EXPOSURE: f64 = 2.0;

const TOOL_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn systemd_unit_passes_systemd_analyze_verify_without_warnings() {
    let dir = unit_for_this_build();
    let unit = dir.path().join(UNIT_NAME);
    let output = run_tool("systemd-analyze", &["verify".as_ref(), unit.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        output.status.success(),
        "systemd-analyze verify failed ({}):\n{stderr}",
        output.status
    );
    // Unknown keys and bad values are only warnings: exit status 0.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(UNIT_NAME))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warned about the unit:\n{}",
        about_unit.join("\n")
    );
}

#[test]
fn systemd_unit_is_rated_ok_by_systemd_analyze_security() {
    let dir = unit_for_this_build();
    let unit = dir.path().join(UNIT_NAME);
    let args = [
        "security".as_ref(),
        "--offline=yes".as_ref(),
        unit.as_os_str(),
    ];
    let output = run_tool("systemd-analyze", &args);
    let stdout = String::from_utf8_lossy(&output.stdout);

    // "→ Overall exposure level for gwproxy.service: 1.4 OK 🙂"
    let exposure = stdout
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|level| level.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in the output ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is over {MAX_EXPOSURE}:\n{stdout}"
    );
}

#[test]
fn unit_runs_the_installed_binary_and_stops_after_the_default_grace() {
    let exec_start = format!("ExecStart={INSTALLED_BINARY} --config /etc/gwproxy/gwproxy.json");
    assert!(UNIT.lines().any(|line| line == exec_start), "{exec_start}");
    assert!(UNIT.lines().any(|line| line == "KillSignal=SIGTERM"));

    // gwproxy's timeouts.shutdown_grace_ms is 30 s by default: systemd
    // must not SIGKILL it while it drains.
    let stop_after = UNIT
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|secs| secs.parse::<u64>().ok())
        .expect("TimeoutStopSec= in whole seconds");
    assert!(
        (31..=60).contains(&stop_after),
        "TimeoutStopSec={stop_after}"
    );
}

#[test]
fn haproxy_example_is_a_valid_configuration() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/haproxy.cfg.example");
    let args = ["-c".as_ref(), "-f".as_ref(), example.as_os_str()];
    let output = run_tool("haproxy", &args);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(output.status.success(), "haproxy -c failed:\n{all}");
    assert!(!all.contains("[WARNING]"), "haproxy -c warned:\n{all}");
}

/// The unit in a directory of its own, its ExecStart pointed at the binary
/// cargo built: `verify` checks that the command exists.
fn unit_for_this_build() -> TempDir {
    let binary = env!("CARGO_BIN_EXE_gwproxy");
    assert!(
        UNIT.contains(INSTALLED_BINARY),
        "ExecStart is not {INSTALLED_BINARY}"
    );
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join(UNIT_NAME),
        UNIT.replace(INSTALLED_BINARY, binary),
    )
    .expect("write the unit");
    dir
}

/// Runs a tool with a deadline; fails clearly when it is not installed.
fn run_tool(program: &str, args: &[&std::ffi::OsStr]) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed (`.ci/run` installs it: \
             apt-get install systemd haproxy)"
        ),
        Err(error) => panic!("cannot run {program}: {error}"),
    };

    // Read both pipes while waiting, so that a chatty tool cannot block.
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + TOOL_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} did not finish within {TOOL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gwproxy-deploy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
