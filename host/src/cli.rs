//! Command-line interface: `balut run` and the client subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default address of the HTTP API: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Balut runs long-lived containers from native plugin libraries.
#[derive(Debug, Parser)]
#[command(name = "balut", version = version_text(), about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load every plugin in a folder, start its containers, serve status until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show the containers of a running host, and its plugin files that are not loaded.
    ///
    /// Exit codes: 0 all is well; 1 a container is failed or quarantined, a plugin file was
    /// refused, the plugin folder is lost, or no balut host answered (or it answered
    /// something else); 2 bad usage.
    Status(StatusArgs),
    /// Control a running host: start, stop or restart a container, reload the config.
    Ctl(CtlArgs),
    /// Print a running host's events as they happen.
    Events(EventsArgs),
    /// Check a plugin library as the host would before loading it (and, with --run, run a
    /// scratch life cycle in a child process). Exit 0: passed; 1: a check failed; 2: usage
    /// or config error.
    Check(CheckArgs),
    /// Print a container's recent log lines (the lines its plugin logged), and follow them.
    Logs(LogsArgs),
    /// Write a new plugin crate to start from: a cdylib with its container, its export
    /// line and a unit test.
    New(NewArgs),
    /// Internal: open and close one library in this short-lived process, so its
    /// initializers and finalizers run here first (the host's pre-flight of new content).
    #[command(name = "__preflight", hide = true)]
    Preflight {
        /// The private copy to open.
        library: PathBuf,
    },
    /// Internal: serve one isolated container instance's calls in this process, over the
    /// socket the host passed as descriptor 3.
    #[command(name = "__isolate", hide = true)]
    Isolate {
        /// The container's name (for the process list; the host sends everything else).
        container: String,
    },
}

/// `balut --version`: the crate version and the plugin interfaces this host loads.
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(crate::loader::version_text)
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plugin library to check (`lib<name>.so`).
    #[arg(value_name = "PLUGIN.so")]
    pub plugin: PathBuf,
    /// Config file (TOML): its timeouts and copy folder apply, and each instance of this
    /// plugin gets its `config` checked by the plugin's own config type.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also run a scratch life cycle (new, start, ready, health, stop, drop) in a child
    /// process, with the first configured instance's config.
    #[arg(long)]
    pub run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check the file even if other users can write it or its folder (for development).
    #[arg(long)]
    pub no_strict_modes: bool,
}

/// Where the host's API is: a TCP address, or the owner-only Unix socket.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// Address of the host's HTTP API.
    #[arg(long, global = true, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN)]
    pub addr: String,
    /// The host's Unix socket (`balut run --unix-socket`) instead of `--addr`; only the
    /// host's user may connect, and no token is needed (nor sent) there.
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "addr")]
    pub unix_socket: Option<PathBuf>,
}

/// Where the host is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// File holding the API token (else the BALUT_TOKEN environment variable).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub action: CtlAction,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Start a container (clears its restart counters, backoff and quarantine).
    Start { name: String },
    /// Stop a container (and the containers that require it); it stays stopped.
    Stop { name: String },
    /// Stop a container if it runs and start it again, clearing its counters.
    Restart { name: String },
    /// Read the config file again and apply the difference.
    Reload,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Replay the events the host still holds after this id first (0: all it holds).
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// Print each event as the JSON the API sends.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The container.
    pub name: String,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// After the kept lines, print each new one as it comes (until the host stops or the
    /// container goes).
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the kept lines to print first (the host keeps the last 1000).
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100)]
    pub lines: usize,
    /// Print each line as the JSON the API sends.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of plugin libraries (`*.so`) [default: the config's `host.plugin_dir`, else ./plugins]
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Config file (TOML); see docs/CONFIG.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for the HTTP API [default: the config's `host.listen`, else 127.0.0.1:7070]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Load plugins even from a folder or files other users can write (for development).
    #[arg(long)]
    pub no_strict_modes: bool,
    /// File holding the API token that mutating requests must bring (else the BALUT_TOKEN
    /// environment variable). Required when listening beyond loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Also serve the API on this Unix socket (mode 0600: only this user may connect; no
    /// token is asked there).
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How `balut run` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Print the JSON the API returns instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw the table whenever something changes (from the event stream).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name, also its crate's: a-z first, then a-z, 0-9, '-' or '_'.
    pub name: String,
    /// What the plugin is: a small HTTP service (on the socket the host holds for it, else
    /// its own) or a worker running a job every interval on a thread of its own.
    #[arg(long, value_enum, default_value = "service")]
    pub kind: PluginKind,
    /// The crate's folder, made if needed; it must not exist or be empty [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// The balut-plugin-api crate the plugin depends on (by absolute path) [default: the
    /// plugin-api/ folder of the checkout balut was built from]
    #[arg(long, value_name = "DIR")]
    pub plugin_api: Option<PathBuf>,
}

/// What `balut new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PluginKind {
    Service,
    Worker,
}
