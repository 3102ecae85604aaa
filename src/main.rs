//! The `gwproxy` binary: parse the command line, load the config, serve until a signal.

#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use gwproxy::cli::{self, Command, USAGE};
use gwproxy::config::{Config, ConfigProblem};
use gwproxy::server::Server;
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

/// Prints every problem, one per line with its key path.
fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            ExitCode::from(EXIT_BAD_START)
        }
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match path {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(problems) => return fail(one_line(path, &problems)),
        },
        None => Config::builtin(&default_secret()),
    };
    init_logging();

    // This thread runs the first worker and the signal handlers; server.rs
    // starts the other workers on threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
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

    tokio::spawn(reload_on_sighup(signals.hangup, tls));
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

/// SIGHUP re-reads the certificate files: rotation without a restart.
/// A bad new file keeps the old certificates. The handler stays installed
/// without TLS too, since SIGHUP's default action would end the process.
async fn reload_on_sighup(mut hangups: Signal, tls: Option<Arc<ListenerTls>>) {
    while hangups.recv().await.is_some() {
        let Some(tls) = &tls else {
            info!("SIGHUP: no certificates to reload");
            continue;
        };
        match tls.reload() {
            Ok(()) => info!("SIGHUP: certificates reloaded"),
            Err(error) => warn!(%error, "SIGHUP: certificates not reloaded; keeping the old ones"),
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

fn one_line(path: &Path, problems: &[ConfigProblem]) -> String {
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("invalid config {}: {}", path.display(), listed.join("; "))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("gwproxy=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn fail(message: String) -> ExitCode {
    eprintln!("gwproxy: {message}");
    ExitCode::from(EXIT_BAD_START)
}
