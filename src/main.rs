//! The `gwproxy` binary: parse the command line, load the config, serve until a signal.

#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use gwproxy::cli::{self, Command, USAGE};
use gwproxy::config::{Config, ConfigProblem, LogConfig, LogFormat};
use gwproxy::server::{Reloader, Server};
use gwproxy::state;
use gwproxy::tls_server::ListenerTls;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for every start-up failure (SPEC.md, "Command line").
const EXIT_BAD_START: u8 = 2;

fn main() -> ExitCode {
    let args = std::env::args().skip(1);
    let command = match cli::parse(args, std::env::var("GWPROXY_CONFIG").ok()) {
        Ok(command) => command,
        Err(problem) => return fail(format!("{problem}\n\n{USAGE}")),
    };

    match command {
        Command::Version => {
            println!("gwproxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config: None } => fail("--check-config needs --config FILE".into()),
        Command::CheckConfig { config: Some(path) } => check_config(&path),
        Command::Run { config } => run(config.as_deref()),
    }
}

/// Prints every problem, one per line with its key path. Past the file's
/// own keys, the files it names are read as start-up reads them, so that
/// "ok" means gwproxy would start (but for a port in use).
fn check_config(path: &Path) -> ExitCode {
    let problems = match Config::load(path) {
        Ok(config) => file_problems(&config),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    };
    if problems.is_empty() {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    for problem in &problems {
        println!("{problem}");
    }
    ExitCode::from(EXIT_BAD_START)
}

/// The listener's certificate and key, and each gateway's TLS files.
fn file_problems(config: &Config) -> Vec<String> {
    let listener = config
        .tls
        .as_ref()
        .and_then(|tls| ListenerTls::load(tls).err());
    let listener = listener.map(|error| format!("tls: {error}"));
    listener
        .into_iter()
        .chain(state::gateway_problems(config))
        .collect()
}

fn run(path: Option<&Path>) -> ExitCode {
    let loaded = match path {
        Some(path) => Config::load(path),
        None => Config::builtin(&default_secret()),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(problems) => return fail(one_line(path, &problems)),
    };
    init_logging(&config.log);

    // This thread runs the first worker and the signal handlers; server.rs
    // starts the other workers on threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(serve(config, path.map(Path::to_path_buf)))
}

async fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
    // Handlers first: a signal that arrives as soon as "listening" is
    // logged must find them installed, not the default action.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => return fail(format!("cannot install signal handlers: {error}")),
    };
    let tls = match config.tls.as_ref().map(ListenerTls::load).transpose() {
        Ok(tls) => tls.map(Arc::new),
        Err(error) => return fail(format!("key `tls`: {error}")),
    };
    let server = match Server::bind(&config, tls.clone()) {
        Ok(server) => server,
        Err(error) => return fail(error),
    };
    let addr = server.local_addr().unwrap_or(config.listen);
    info!(%addr, tls = tls.is_some(), gateways = config.gateways.len(), "gwproxy listening");
    if config.users.is_empty() {
        warn!("no users in the config: every /api/proxy request will be refused with 401");
    }

    if let Some(addr) = server.metrics_addr() {
        info!(%addr, "metrics listening");
    }

    tokio::spawn(reload_on_sighup(signals.hangup, path, server.reloader()));
    server
        .run(stop_requested(signals.terminate, signals.interrupt))
        .await;
    ExitCode::SUCCESS
}

struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn stop_requested(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
}

/// SIGHUP re-reads the config file and hands users, gateways, limits,
/// timeouts and certificates to the workers; requests in flight finish on
/// the old settings. A file with problems keeps the old config and logs
/// every problem. The handler stays installed without a file too, since
/// SIGHUP's default action would end the process.
async fn reload_on_sighup(mut hangups: Signal, path: Option<PathBuf>, reloader: Reloader) {
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            info!("SIGHUP: running on the built-in config; nothing to reload");
            continue;
        };
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(problems) => {
                for problem in &problems {
                    warn!(%problem, "SIGHUP: config not reloaded; keeping the old one");
                }
                continue;
            }
        };
        match reloader.reload(&config) {
            Ok(restart_only) => {
                info!(file = %path.display(), "SIGHUP: config reloaded");
                for key in restart_only {
                    warn!(key, "SIGHUP: this change takes effect on restart");
                }
            }
            Err(error) => warn!(%error, "SIGHUP: config not reloaded; keeping the old one"),
        }
    }
}

/// `GWPROXY_SECRET`, or a fresh random one that is printed once so that
/// the person who started gwproxy can use it.
fn default_secret() -> String {
    if let Some(secret) = std::env::var("GWPROXY_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return secret;
    }
    let secret = random_hex(16);
    eprintln!("gwproxy: GWPROXY_SECRET is not set; the secret for this run is {secret}");
    secret
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Err(error) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf))
    {
        eprintln!("gwproxy: cannot read /dev/urandom ({error}); set GWPROXY_SECRET");
        std::process::exit(EXIT_BAD_START.into());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn one_line(path: Option<&Path>, problems: &[ConfigProblem]) -> String {
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let source = path.map_or("(built-in)".into(), |p| p.display().to_string());
    format!("invalid config {source}: {}", listed.join("; "))
}

/// `log.level` as the filter, unless `RUST_LOG` is set; text or JSON lines
/// on stderr.
fn init_logging(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(qualified_level(&log.level)))
        .unwrap_or_else(|_| EnvFilter::new("gwproxy=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// A bare level such as `debug` means gwproxy's own logs at that level,
/// not every dependency's; a full filter is used as written.
fn qualified_level(level: &str) -> String {
    let bare = ["trace", "debug", "info", "warn", "error", "off"];
    if bare.contains(&level) {
        format!("gwproxy={level}")
    } else {
        level.to_owned()
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("gwproxy: {message}");
    ExitCode::from(EXIT_BAD_START)
}
