//! Balut's benchmarks. `cargo run --release -p balut-bench [-- --quick] [-- reload]`.
//!
//! Each benchmark drives a real release build of the host over its real interfaces (files,
//! HTTP) and prints what it measured. Nothing here asserts a figure.
//!
//! - `reload`: time from the `rename` of a new version of a plugin into the watched folder
//!   to the new generation's container being `running`, over many reloads.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

struct Options {
    quick: bool,
    which: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let mut options = Options {
        quick: false,
        which: Vec::new(),
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "reload" | "status" => options.which.push(arg),
            other => bail!("unknown argument {other:?}; use --quick and/or: reload, status"),
        }
    }
    let all = options.which.is_empty();
    let artifacts = build()?;
    println!("machine: {} cores; release build", cores());
    if all || options.which.iter().any(|w| w == "reload") {
        reload(&artifacts, if options.quick { 50 } else { 200 })?;
    }
    if all || options.which.iter().any(|w| w == "status") {
        let containers = if options.quick { 200 } else { 1000 };
        status(
            &artifacts,
            containers,
            Duration::from_secs(if options.quick { 3 } else { 10 }),
        )?;
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Artifacts {
    balut: PathBuf,
    chaos: PathBuf,
}

/// Builds the host and the plugins the benchmarks use, in release mode.
fn build() -> anyhow::Result<Artifacts> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "balut",
            "-p",
            "balut-plugin-chaos",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    Ok(Artifacts {
        balut: target.join("balut"),
        chaos: target.join("libchaos.so"),
    })
}

/// A running host, killed on drop.
struct Host {
    child: Child,
    addr: String,
    agent: ureq::Agent,
}

impl Host {
    fn start(balut: &Path, plugin_dir: &Path, tmp: &Path) -> anyhow::Result<Self> {
        Self::start_with(balut, plugin_dir, tmp, None)
    }

    fn start_with(
        balut: &Path,
        plugin_dir: &Path,
        tmp: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(balut);
        command
            .args(["run", "--listen", "127.0.0.1:0", "--plugin-dir"])
            .arg(plugin_dir);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env("RUST_LOG", "warn,balut=info")
            .env("TMPDIR", tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting balut")?;
        let stderr = child.stderr.take().context("host stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("addr=") {
                    let addr = line[at + 5..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("the host did not print its address")?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Self { child, addr, agent })
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("http://{}{path}", self.addr);
        Ok(self.agent.get(&url).call()?.body_mut().read_json()?)
    }

    fn container(&self, name: &str) -> anyhow::Result<Value> {
        self.get(&format!("/v1/containers/{name}"))
    }

    /// Polls until `name` runs generation `generation`; returns when that was seen.
    fn wait_generation(
        &self,
        name: &str,
        generation: u64,
        limit: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.container(name)?;
            if c["state"] == "running" && c["generation"].as_u64() == Some(generation) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("{name} did not reach generation {generation}: {c}");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Reload latency: rename of a new version -> new generation running.
fn reload(artifacts: &Artifacts, reloads: usize) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let plugins = work.path().join("plugins");
    let staging = work.path().join("staging");
    let tmp = work.path().join("tmp");
    for dir in [&plugins, &staging, &tmp] {
        std::fs::create_dir(dir)?;
    }
    let original = std::fs::read(&artifacts.chaos)?;
    let target = plugins.join("libchaos.so");
    std::fs::write(&target, &original)?;
    let host = Host::start(&artifacts.balut, &plugins, &tmp)?;
    host.wait_generation("chaos", 1, Duration::from_secs(60))?;

    let mut latencies = Vec::with_capacity(reloads);
    for i in 0..reloads {
        // A new version: the same library with different trailing bytes (a new hash).
        let mut bytes = original.clone();
        bytes.extend_from_slice(format!("version {i}").as_bytes());
        let staged = staging.join("libchaos.so");
        std::fs::write(&staged, &bytes)?;
        let began = Instant::now();
        std::fs::rename(&staged, &target)?;
        let running = host.wait_generation("chaos", i as u64 + 2, Duration::from_secs(30))?;
        latencies.push(running - began);
    }
    latencies.sort();
    println!(
        "reload: {reloads} reloads of a {:.1} MB plugin: reload_p50_ms {} reload_p99_ms {} (min {}, max {}); goal p50 <= 100, p99 <= 250",
        original.len() as f64 / 1e6,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[0]),
        ms(latencies[latencies.len() - 1]),
    );
    Ok(())
}

/// Status endpoint under load: `containers` chaos instances; one container's status and
/// the full list, each hammered by client threads with keep-alive connections.
fn status(artifacts: &Artifacts, containers: usize, each: Duration) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let plugins = work.path().join("plugins");
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&plugins)?;
    std::fs::create_dir(&tmp)?;
    std::fs::copy(&artifacts.chaos, plugins.join("libchaos.so"))?;
    let mut config = String::new();
    for i in 0..containers {
        config.push_str(&format!("[containers.c{i}]\nplugin = \"chaos\"\n"));
    }
    let config_path = work.path().join("balut.toml");
    std::fs::write(&config_path, config)?;
    let began = Instant::now();
    let host = Host::start_with(&artifacts.balut, &plugins, &tmp, Some(&config_path))?;
    let last = format!("c{}", containers - 1);
    host.wait_generation(&last, 1, Duration::from_secs(120))?;
    println!(
        "status: {containers} containers running after {} ms",
        began.elapsed().as_millis()
    );
    for (what, path) in [
        ("one container", "/v1/containers/c0".to_owned()),
        ("full list", "/v1/containers".to_owned()),
    ] {
        let (count, latencies) = hammer(&host.addr, &path, 4, each)?;
        println!(
            "status {what} ({path}): {:.0} requests/s, p50 {} ms, p99 {} ms ({count} requests, 4 client threads on the same {} cores)",
            count as f64 / each.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            cores(),
        );
    }
    Ok(())
}

/// `threads` clients, each on its own keep-alive connection, GET `path` for `each`.
fn hammer(
    addr: &str,
    path: &str,
    threads: usize,
    each: Duration,
) -> anyhow::Result<(usize, Vec<Duration>)> {
    let url = format!("http://{addr}{path}");
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .new_agent();
                let mut latencies = Vec::new();
                let end = Instant::now() + each;
                while Instant::now() < end {
                    let began = Instant::now();
                    let mut response = agent.get(&url).call()?;
                    let _ = response.body_mut().read_to_vec()?;
                    latencies.push(began.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        let latencies = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(latencies);
    }
    all.sort();
    Ok((all.len(), all))
}
