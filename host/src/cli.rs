//! Command-line interface: `balut run` and the client subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default address of the HTTP API: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Balut runs long-lived containers from native plugin libraries.
#[derive(Debug, Parser)]
#[command(name = "balut", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load every plugin in a folder, start its containers, serve status until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show the containers of a running host.
    Status(StatusArgs),
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
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Address of the host's HTTP API.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN)]
    pub addr: String,
    /// Print the JSON the API returns instead of a table.
    #[arg(long)]
    pub json: bool,
}
