//! `balut`: the plugin host.
//!
//! The binary (`src/main.rs`) only calls [`main`]. The library exists so that the
//! benchmarks (`bench/`) and the fuzz targets (`fuzz/`) can drive the loader, the ELF checks
//! and the config parser directly; it is not a stable API for anyone else.

mod api;
mod check;
mod cli;
mod client;
pub mod config;
mod crash;
mod events;
mod exit;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod isolation;
mod limits;
pub mod loader;
mod logging;
mod logs;
mod metrics;
mod model;
mod platform;
mod probes;
mod restart;
mod scaffold;
mod sdnotify;
pub mod services;
mod sockets;
mod status;
mod supervisor;
mod token;
mod trust;
mod unix_socket;
mod watcher;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::cli::{Cli, Command, LogFormat, RunArgs};
use crate::config::Config;
use crate::limits::ApiLimits;
use crate::platform::Real;
use crate::status::Board;
use crate::supervisor::{Outcome, Settings, Supervisor};
use crate::unix_socket::SocketFile;

/// Exit codes: 0 clean, 1 a container did not stop cleanly or a runtime error,
/// 2 bad usage or config, 70 the supervisor failed (a bug in balut; sysexits' EX_SOFTWARE)
/// or plugin code called `exit()` (`crash/`), 130 forced by a second signal.
const EXIT_UNCLEAN: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_SOFTWARE: u8 = 70;
const EXIT_FORCED: u8 = 130;

/// The `balut` command line: parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Run(args) => args.log_format,
        _ => LogFormat::Text,
    };
    logging::init(format);
    let client_result = |what: &str, result: anyhow::Result<()>| match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balut {what}: {e:#}");
            ExitCode::from(EXIT_UNCLEAN)
        }
    };
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Status(args) => match client::status(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(EXIT_UNCLEAN),
            Err(e) => {
                eprintln!("balut status: {e:#}");
                ExitCode::from(EXIT_UNCLEAN)
            }
        },
        Command::Ctl(args) => client_result("ctl", client::ctl(&args)),
        Command::Events(args) => client_result("events", client::events(&args)),
        Command::Logs(args) => client_result("logs", client::logs(&args)),
        Command::New(args) => scaffold::main(&args),
        Command::Check(args) => check::main(&args),
        Command::Preflight { library } => loader::preflight::child(&library),
        Command::Isolate { container: _ } => isolation::child_main(),
    };
    crash::exiting_on_purpose();
    code
}

/// Config and folder, resolved from the command line and the config file.
/// What `balut run` resolved from its arguments and config.
struct Resolved {
    settings: Settings,
    listen: std::net::SocketAddr,
    token: Option<String>,
    unix_socket: Option<PathBuf>,
}

fn settings(args: &RunArgs) -> anyhow::Result<Resolved> {
    let config = match &args.config {
        Some(file) => Config::load(file)?,
        None => Config::default(),
    };
    let plugin_dir = args
        .plugin_dir
        .clone()
        .or_else(|| config.host.plugin_dir.clone())
        .unwrap_or_else(|| PathBuf::from("plugins"));
    if !plugin_dir.is_dir() {
        anyhow::bail!(
            "plugin folder {} does not exist or is not a folder",
            plugin_dir.display()
        );
    }
    let plugin_dir = std::fs::canonicalize(&plugin_dir)
        .with_context(|| format!("resolving the plugin folder {}", plugin_dir.display()))?;
    let strict_modes = config.host.strict_modes && !args.no_strict_modes;
    if strict_modes {
        trust::check_folder(&plugin_dir)?;
    }
    let listen = match args.listen.or(config.host.listen) {
        Some(addr) => addr,
        None => cli::DEFAULT_LISTEN
            .parse()
            .context("default listen address")?,
    };
    let token = token::for_host(args.token_file.as_deref())?;
    if !listen.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "listening on {listen}, beyond loopback, needs an API token: \
             --token-file FILE or the BALUT_TOKEN environment variable"
        );
    }
    if let Some(path) = &args.unix_socket {
        unix_socket::refuse_if_taken(path)?;
    }
    Ok(Resolved {
        settings: Settings {
            plugin_dir,
            config,
            config_path: args.config.clone(),
            strict_modes,
        },
        listen,
        token,
        unix_socket: args.unix_socket.clone(),
    })
}

fn run(args: RunArgs) -> ExitCode {
    // Before any plugin code runs: a crash or an exit() in it names its container.
    if let Err(e) = crash::install(EXIT_SOFTWARE) {
        warn!(error = %e, "a crash in plugin code will not name its container");
    }
    let resolved = match settings(&args) {
        Ok(resolved) => resolved,
        Err(e) => {
            eprintln!("balut run: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let copy_dir = resolved.settings.config.host.copy_dir.as_deref();
    if let Err(e) = loader::check_copy_dir(copy_dir) {
        eprintln!("balut run: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    loader::remove_stale(copy_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("balut run: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNCLEAN);
        }
    };
    let code = match runtime.block_on(serve(resolved)) {
        Ok(Ending::Clean) => 0,
        Ok(Ending::Unclean) => EXIT_UNCLEAN,
        Ok(Ending::SupervisorFailed) => EXIT_SOFTWARE,
        Err(e) => {
            error!("{e:#}");
            eprintln!("balut run: {e:#}");
            EXIT_UNCLEAN
        }
    };
    // Threads the host gave up on (a plugin call that hangs, a close stuck in a finalizer)
    // are not waited for, and the C library's exit path, which runs the finalizers of every
    // library still loaded under the loader's lock, is skipped: a stuck plugin must not keep
    // the host from exiting. Everything of the host's own is done by now.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    exit::immediately(code)
}

/// How the host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every container stopped cleanly.
    Clean,
    /// Some container did not stop cleanly.
    Unclean,
    /// The supervisor panicked (it stopped what it could).
    SupervisorFailed,
}

impl Ending {
    /// What the supervisor task's end means: a panic that escaped it, or one it caught,
    /// is never reported as a clean shutdown.
    fn of(joined: Result<Outcome, tokio::task::JoinError>) -> Self {
        match joined {
            Ok(Outcome::Stopped(report)) if report.clean() => {
                info!("all containers stopped cleanly");
                Self::Clean
            }
            Ok(Outcome::Stopped(report)) => {
                warn!(
                    failed = report.failures.len(),
                    "some containers did not stop cleanly"
                );
                Self::Unclean
            }
            Ok(Outcome::Panicked(panic)) => {
                error!(panic = %panic, "exiting: the supervisor failed");
                Self::SupervisorFailed
            }
            Err(e) => {
                error!(error = %e, "exiting: the supervisor task failed");
                Self::SupervisorFailed
            }
        }
    }
}

/// Runs the host until a signal (or until the supervisor fails); returns how it ended.
async fn serve(resolved: Resolved) -> anyhow::Result<Ending> {
    let Resolved {
        settings,
        listen,
        token,
        unix_socket,
    } = resolved;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // The API's limits, under the open-file limit raised first (`limits.rs`).
    let open_files = limits::raise_open_files();
    let listeners = 1 + usize::from(unix_socket.is_some());
    let api_limits = ApiLimits::fit(&settings.config.host, open_files, listeners);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "the HTTP API listens beyond loopback");
    }

    let board = Board::default();
    let plugin_dir = settings.plugin_dir.clone();
    let host_info = api::HostInfo::new(&plugin_dir, settings.config_path.as_deref());
    let host = &settings.config.host;
    let exe = match loader::preflight::own_executable() {
        Ok(exe) => Some(exe),
        Err(e) => {
            warn!(error = %e, "cannot find balut's own executable; new plugin files are opened without a pre-flight, and isolated containers cannot start");
            None
        }
    };
    let platform = Real::new(
        host.copy_dir.as_deref(),
        host.load_timeout_ms.duration(),
        exe,
        true,
    )
    .context("creating the private copy folder")?;
    let private_dir = platform.private_dir().to_owned();
    let supervisor = Supervisor::new(settings, board.clone(), platform, fastrand::u64(..));
    let handle = supervisor.handle();
    info!(plugin_dir = %plugin_dir.display(), private_dir = %private_dir.display(), "balut starting");

    // The Unix socket, when asked for: its file mode (0600) is the guard, so no token.
    let unix = match &unix_socket {
        Some(path) => Some(SocketFile::bind(path)?),
        None => None,
    };
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let app = api::router(board.clone(), handle.clone(), token, host_info.clone());
    let http = tokio::spawn(http::serve(
        listener,
        format!("tcp {addr}"),
        app,
        api_limits,
        board.metrics.clone(),
        stopped(http_stopped.clone()),
    ));
    info!(
        %addr,
        max_connections = api_limits.max_connections,
        header_timeout_ms = api_limits.header_timeout.as_millis(),
        "http api listening"
    );
    let mut socket_file = None;
    let unix_http = unix.map(|(listener, file)| {
        info!(path = %file.path().display(), "http api listening on a unix socket");
        let app = api::router(board.clone(), handle.clone(), None, host_info.clone());
        let name = format!("unix {}", file.path().display());
        socket_file = Some(file);
        tokio::spawn(http::serve(
            listener,
            name,
            app,
            api_limits,
            board.metrics.clone(),
            stopped(http_stopped.clone()),
        ))
    });

    let notifier = match sdnotify::Notifier::from_env() {
        Ok(notifier) => notifier,
        Err(e) => {
            warn!(error = %e, "not notifying the service manager");
            None
        }
    };
    let (started, start_done) = tokio::sync::oneshot::channel::<()>();
    let notify_task = notifier.clone().map(|notifier| {
        tokio::spawn(sdnotify::run(
            notifier,
            board.clone(),
            start_done,
            sdnotify::watchdog_interval(),
        ))
    });

    let mut supervisor_task = tokio::spawn(supervisor.start_and_run(move |scanned| {
        if let Err(e) = scanned {
            error!(plugin_dir = %plugin_dir.display(), error = %e, "cannot read the plugin folder");
        }
        let _ = started.send(());
    }));

    // The signal loop never waits on the supervisor: a reload is its own task, and the
    // first SIGINT/SIGTERM only raises the stop flag (the supervisor gives up starts in
    // flight and queued requests, and the shutdown budget counts from now).
    let mut ended = None;
    let first = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the config");
                // The supervisor logs the outcome; a bad file leaves the old one in force.
                let handle = handle.clone();
                tokio::spawn(async move { handle.reload().await });
            }
            joined = &mut supervisor_task => {
                ended = Some(Ending::of(joined));
                break "the supervisor's end";
            }
        }
    };
    if let Some(notifier) = &notifier {
        notifier.stopping();
    }
    let ending = match ended {
        Some(ending) => ending,
        None => {
            info!(
                signal = first,
                "stopping all containers; a second signal exits at once"
            );
            handle.begin_shutdown();
            // The report comes back as the task's outcome.
            tokio::select! {
                joined = &mut supervisor_task => Ending::of(joined),
                _ = sigterm.recv() => force_exit(&private_dir),
                _ = sigint.recv() => force_exit(&private_dir),
            }
        }
    };
    let _ = stop_http.send(true);
    let _ = http.await;
    if let Some(unix_http) = unix_http {
        let _ = unix_http.await;
    }
    if let Some(file) = &socket_file {
        file.remove();
    }
    if let Some(task) = notify_task {
        task.abort();
    }
    Ok(ending)
}

/// The second signal: exit at once, whatever the supervisor or any plugin thread is doing.
fn force_exit(private_dir: &std::path::Path) -> ! {
    warn!("second signal: exiting now");
    crash::exiting_on_purpose();
    let _ = std::fs::remove_dir_all(private_dir);
    exit::immediately(EXIT_FORCED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::ShutdownReport;

    #[test]
    fn a_supervisor_that_panicked_never_ends_the_host_cleanly() {
        let clean = Ok(Outcome::Stopped(ShutdownReport::default()));
        assert_eq!(Ending::of(clean), Ending::Clean);
        let panicked = Ok(Outcome::Panicked("index out of bounds".into()));
        assert_eq!(Ending::of(panicked), Ending::SupervisorFailed);
        assert_eq!(EXIT_SOFTWARE, 70);
    }
}
