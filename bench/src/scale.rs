//! `scale` (also `status`): many idle `chaos` instances in one host
//! (`[containers.cN] plugin = "chaos"`): start-up, memory per instance (against the same
//! library with one instance), the status endpoints under load, idle CPU at default probes
//! and with 1 s liveness probes, and stop on SIGTERM.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;

use crate::Artifacts;
use crate::host::{Dirs, Host, hammer};
use crate::memory;
use crate::report::{Figures, Goal, cores, ms, percentile};

/// From ready to reading the host's memory: the instances' first steps are behind them.
const SETTLE: Duration = Duration::from_millis(1500);

/// Client threads (keep-alive connections) hammering the status endpoints.
const CLIENTS: usize = 4;

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let containers = if quick { 200 } else { 1000 };
    let each = Duration::from_secs(if quick { 3 } else { 10 });
    let idle = Duration::from_secs(if quick { 3 } else { 10 });

    // The same host with no plugin and no container: process start to ready.
    let empty = {
        let work = tempfile::tempdir()?;
        let host = Host::start(&artifacts.balut, &Dirs::under(work.path())?, None)?;
        host.wait_ready(Duration::from_secs(60))? - host.spawned
    };

    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    std::fs::copy(&artifacts.chaos, dirs.plugins.join("libchaos.so"))?;

    // The same library with one instance (the folder's own `chaos`, no config): the
    // baseline of the memory per container.
    let one = {
        let host = Host::start(&artifacts.balut, &dirs, None)?;
        host.wait_ready(Duration::from_secs(60))?;
        std::thread::sleep(SETTLE);
        let resident = memory::resident(host.pid())?;
        host.terminate(Duration::from_secs(60))?;
        resident
    };

    let config = write_config(work.path(), "balut.toml", containers, "")?;
    let host = Host::start(&artifacts.balut, &dirs, Some(&config))?;
    let started = host.wait_ready(Duration::from_secs(120))? - host.spawned;
    let (running, listed) = host.running()?;
    ensure!(
        running == containers && listed == containers,
        "{running} of {listed} containers running, expected {containers}"
    );
    std::thread::sleep(SETTLE);
    let many = memory::resident(host.pid())?;
    println!(
        "scale: {containers} containers running {:.0} ms after the host process started \
         (an empty host is ready after {:.0} ms)",
        ms(started),
        ms(empty)
    );
    figures.add_goal("start_all_ms", ms(started), Goal::AtMost(1000.0));
    figures.add("start_all_empty_host_ms", ms(empty));
    let added = (containers - 1) as f64;
    let per = |which: fn(&memory::Resident) -> f64| (which(&many) - which(&one)) / added;
    println!(
        "scale: host VmRSS {:.0} KiB with 1 instance, {:.0} KiB with {containers} ({} and {} \
         thread stacks); per instance: stacks {:.1} KiB, other anonymous {:.1} KiB, files {:.1} KiB",
        one.total,
        many.total,
        one.stack_count,
        many.stack_count,
        per(|r| r.stacks),
        per(|r| r.anonymous),
        per(|r| r.files),
    );
    figures.add_goal(
        "rss_per_container_kib",
        per(|r| r.total),
        Goal::AtMost(64.0),
    );
    figures.add("rss_per_container_stack_kib", per(|r| r.stacks));
    figures.add("rss_per_container_anon_kib", per(|r| r.anonymous));

    for (what, path) in [("one", "/v1/containers/c0"), ("list", "/v1/containers")] {
        let latencies = hammer(&host.addr, path, CLIENTS, each)?;
        let rate = latencies.len() as f64 / each.as_secs_f64();
        println!(
            "scale: GET {path}: {rate:.0} requests/s, p50 {:.2} ms ({} requests, {CLIENTS} client \
             threads on the same {} cores)",
            ms(percentile(&latencies, 0.5)),
            latencies.len(),
            cores(),
        );
        let p99 = ms(percentile(&latencies, 0.99));
        if what == "one" {
            figures.add_goal("status_one_rps", rate, Goal::AtLeast(20_000.0));
            figures.add("status_one_p99_ms", p99);
        } else {
            figures.add("status_list_rps", rate);
            figures.add_goal("status_list_p99_ms", p99, Goal::AtMost(5.0));
        }
    }

    // Let the last requests drain, then nothing but the probes.
    std::thread::sleep(Duration::from_secs(1));
    let cpu = host.cpu_percent_over(idle)?;
    println!(
        "scale: idle over {} s at default probes (liveness 10 s, readiness 5 s)",
        idle.as_secs()
    );
    figures.add_goal("idle_cpu_pct", cpu, Goal::AtMost(2.0));

    let (stopped, status) = host.terminate(Duration::from_secs(60))?;
    println!("scale: SIGTERM -> exit in {:.0} ms ({status})", ms(stopped));
    figures.add_goal("stop_all_ms", ms(stopped), Goal::AtMost(50.0));

    // Liveness every second, for every container.
    let config = write_config(
        work.path(),
        "balut-probes-1s.toml",
        containers,
        "[host]\nhealth_interval_ms = 1000\n",
    )?;
    let host = Host::start(&artifacts.balut, &dirs, Some(&config))?;
    host.wait_ready(Duration::from_secs(120))?;
    // Past the first probe of each container, into the steady state.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = host.cpu_percent_over(idle)?;
    println!(
        "scale: idle over {} s with [host] health_interval_ms = 1000",
        idle.as_secs()
    );
    figures.add("idle_cpu_pct_probes_1s", cpu);
    host.terminate(Duration::from_secs(60))?;
    Ok(())
}

/// A config file with `containers` instances `c0`.. of `chaos`, after `head`.
pub fn write_config(
    dir: &Path,
    name: &str,
    containers: usize,
    head: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let mut config = head.to_owned();
    for i in 0..containers {
        config.push_str(&format!("[containers.c{i}]\nplugin = \"chaos\"\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, config)?;
    Ok(path)
}
