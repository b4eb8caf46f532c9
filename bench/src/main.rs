//! Balut's benchmarks. `cargo run --release -p balut-bench [-- --quick] [-- NAME...]`.
//!
//! Each benchmark drives a release build of the real host (over files, HTTP and signals) or
//! its loader (`balut::loader`, in this process) and prints what it measured; nothing here
//! asserts a figure. The figures go to `target/balut-bench/summary.json` and a table at the
//! end. docs/BENCHMARKS.md defines each one.
//!
//! - `load`: file -> `running` per plugin through the host, against the floor (the same
//!   steps by hand), at 1, 10 and 50 plugins.
//! - `reload`: `rename` of a new version -> new generation `running`.
//! - `reload_under_load`: `http-echo` under continuous HTTP load through many hot reloads,
//!   on a socket of its own (stop-first) beside one the host holds (overlap): requests
//!   failed, the longest gap between answers, latency.
//! - `scale` (alias `status`): 1,000 instances: start, memory per instance, status
//!   endpoints under load, idle CPU, stop on SIGTERM.
//! - `call`: one health probe round trip through `Worker::health`, beside its floor (a bare
//!   round trip between a task and a thread, measured in the same run) and a direct call.
//! - `isolation`: containers in child processes of their own beside the same on threads:
//!   probe round trip, 100 instances (start, memory, stop), crash -> running again.
//! - `peers`: the same small workload (N workers appending a line to a file every second)
//!   run by Balut on threads, Balut in process mode and supervisord, side by side: start,
//!   memory per worker, idle CPU, killed -> running again, status, stop (N = 10, 100, 500).
//! - `console` (only when named: it needs Chromium and chromedriver): the web console in
//!   headless Chromium with 1,000 containers: page ready, first render, filter, a state
//!   change -> its row.
//! - `cycle`: memory after 1,000 load/start/stop/unload cycles, beside a loader that never
//!   unloads.

mod call;
mod console;
mod cycle;
mod host;
mod inproc;
mod isolation;
mod load;
mod memory;
mod peers;
mod plugins;
mod reload;
mod reload_under_load;
mod report;
mod scale;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::report::Figures;

type Benchmark = fn(&Artifacts, bool, &mut Figures) -> anyhow::Result<()>;

/// Every benchmark, in the order they run. `cycle` is last: its never-unloading half
/// leaves a thousand libraries mapped in this process.
const BENCHMARKS: [(&str, Benchmark); 9] = [
    ("load", load::run),
    ("reload", reload::run),
    ("reload_under_load", reload_under_load::run),
    ("scale", scale::run),
    ("call", call::run),
    ("isolation", isolation::run),
    ("peers", peers::run),
    ("console", console::run),
    ("cycle", cycle::run),
];

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("balut-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen benchmarks; false when one of them could not run to its end.
fn run() -> anyhow::Result<bool> {
    let names: Vec<&str> = BENCHMARKS.iter().map(|(name, _)| *name).collect();
    let mut quick = false;
    let mut chosen: Vec<&str> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "status" => chosen.push("scale"),
            other => match names.iter().find(|n| **n == other) {
                Some(name) => chosen.push(name),
                None => bail!(
                    "unknown argument {other:?}; use --quick and/or: {} (status = scale)",
                    names.join(", ")
                ),
            },
        }
    }
    if chosen.is_empty() {
        // `peers` runs only when named: it installs supervisord when it is missing;
        // `console` too: it needs Chromium and chromedriver.
        chosen = names
            .iter()
            .copied()
            .filter(|n| !["peers", "console"].contains(n))
            .collect();
    }
    let artifacts = build()?;
    println!(
        "machine: {} cores; release build; {}",
        report::cores(),
        if quick { "quick run" } else { "full run" }
    );
    let began = Instant::now();
    let mut figures = Figures::default();
    for (name, benchmark) in BENCHMARKS {
        if !chosen.contains(&name) {
            continue;
        }
        println!("\n== {name}");
        let one = Instant::now();
        if let Err(e) = benchmark(&artifacts, quick, &mut figures) {
            figures.failed(name, &e);
        }
        println!("({name}: {:.1} s)", one.elapsed().as_secs_f64());
    }
    let summary = artifacts.target.join("balut-bench").join("summary.json");
    chosen.sort_by_key(|c| names.iter().position(|n| n == c));
    chosen.dedup();
    figures.write_summary(&summary, quick, &chosen)?;
    println!(
        "\n{}\nall benchmarks: {:.1} s; figures in {}",
        figures.table(),
        began.elapsed().as_secs_f64(),
        summary.display()
    );
    Ok(!figures.any_failed())
}

pub struct Artifacts {
    balut: PathBuf,
    chaos: PathBuf,
    http_echo: PathBuf,
    ticker: PathBuf,
    /// `peer-worker`, the `peers` benchmark's worker for supervisord.
    peer_worker: PathBuf,
    /// The cargo target folder.
    target: PathBuf,
}

/// Builds the host and the plugins the benchmarks use, in release mode.
fn build() -> anyhow::Result<Artifacts> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // What `cargo run` set for this package: build scripts that watch these variables
    // (ring's does) would otherwise see a change and rebuild, here and in the next
    // `cargo run`, every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&&*name)
        {
            command.env_remove(&*name);
        }
    }
    let status = command
        .current_dir(&root)
        // With this benchmark's own package too: features are unified over the packages
        // of a build, so without it this build and `cargo run -p balut-bench` would each
        // rebuild the host in turn.
        .args([
            "build",
            "--release",
            "-p",
            "balut",
            "-p",
            "balut-plugin-chaos",
            "-p",
            "balut-plugin-http-echo",
            "-p",
            "balut-plugin-ticker",
            "-p",
            "balut-bench",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let release = target.join("release");
    Ok(Artifacts {
        balut: release.join("balut"),
        chaos: release.join("libchaos.so"),
        http_echo: release.join("libhttp_echo.so"),
        ticker: release.join("libticker.so"),
        peer_worker: release.join("peer-worker"),
        target,
    })
}
