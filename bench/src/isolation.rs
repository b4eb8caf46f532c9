//! `isolation`: `chaos` containers in child processes of their own (`isolation =
//! "process"`, each a `balut __isolate NAME`) beside the same on threads of the host:
//!
//! - the liveness probe round trip as the host times it (around its `health` call: for a
//!   process, the frames over the socket pair and the call in the child), read from the
//!   containers' last ten probe results (`GET /v1/containers/NAME`); beside one round trip
//!   over a bare socket pair to a thread of this process (a wake-up each way);
//! - 100 instances: host process spawned -> `/readyz` 200, what each process holds resident,
//!   SIGTERM -> exit, and whether any process outlives the host;
//! - a container that segfaults in its first health check, restarted at once (first retry,
//!   every time): `failed` -> `running` again, timed by the arrival of `/v1/events`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::Artifacts;
use crate::host::{Dirs, Host, is_isolated, proc_kib};
use crate::report::{Figures, Goal, median, ms, percentile, us};
use crate::scale::write_config;

/// Instances started at once, in each mode.
const INSTANCES: usize = 100;
/// The liveness period of the probe benchmark: ten results kept cover 50 ms.
const PROBE_PERIOD_MS: u64 = 5;
/// How often each container's last ten probe results are read.
const PROBE_POLL: Duration = Duration::from_millis(20);
/// The liveness period of the crashing container: its first check (and crash) comes this
/// long after each start.
const CRASH_PERIOD_MS: u64 = 10;

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    std::fs::copy(&artifacts.chaos, dirs.plugins.join("libchaos.so"))?;
    probes(artifacts, &dirs, work.path(), quick, figures)?;
    many(artifacts, &dirs, work.path(), quick, figures)?;
    crashes(artifacts, &dirs, work.path(), quick, figures)
}

/// The probe round trip of a thread container and a process container in one host.
fn probes(
    artifacts: &Artifacts,
    dirs: &Dirs,
    work: &Path,
    quick: bool,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let window = Duration::from_secs(if quick { 3 } else { 10 });
    let mut config = String::new();
    for (name, isolation) in [("t", "thread"), ("p", "process")] {
        config.push_str(&format!(
            "[containers.{name}]\nplugin = \"chaos\"\nisolation = \"{isolation}\"\n\
             [containers.{name}.liveness]\nperiod_ms = {PROBE_PERIOD_MS}\n\
             [containers.{name}.readiness]\ndisabled = true\n"
        ));
    }
    let path = work.join("probes.toml");
    std::fs::write(&path, config)?;
    let host = Host::start(&artifacts.balut, dirs, Some(&path))?;
    host.wait_ready(Duration::from_secs(60))?;
    let p = host.get("/v1/containers/p")?;
    ensure!(
        p["isolation"] == "process" && p["process"]["pid"].is_u64(),
        "p is not isolated: {p}"
    );
    // Past the first results, into the steady state.
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: [HashMap<String, f64>; 2] = Default::default();
    let end = Instant::now() + window;
    while Instant::now() < end {
        for (name, seen) in ["t", "p"].iter().zip(&mut seen) {
            let status = host.get(&format!("/v1/containers/{name}"))?;
            ensure!(
                status["state"] == "running",
                "{name} stopped running: {status}"
            );
            for probe in status["probes"].as_array().context("no probes")? {
                if probe["probe"] != "liveness" || probe["ok"] != true {
                    continue;
                }
                if let (Some(at), Some(duration)) =
                    (probe["at"].as_str(), probe["duration_ms"].as_f64())
                {
                    seen.insert(at.to_owned(), duration);
                }
            }
        }
        std::thread::sleep(PROBE_POLL);
    }
    host.terminate(Duration::from_secs(30))?;
    let floor = socket_floor(if quick { 200 } else { 600 })?;
    for (mode, seen) in ["thread", "isolated"].into_iter().zip(seen) {
        let mut samples: Vec<Duration> = seen
            .into_values()
            .map(|ms| Duration::from_secs_f64(ms / 1e3))
            .collect();
        samples.sort();
        ensure!(
            samples.len() >= 100,
            "only {} {mode} probes seen",
            samples.len()
        );
        println!(
            "isolation: {} {mode} liveness probes over {} s (every {PROBE_PERIOD_MS} ms), \
             as the host timed them",
            samples.len(),
            window.as_secs()
        );
        let p50 = us(percentile(&samples, 0.5));
        if mode == "isolated" {
            figures.add_goal("isolated_probe_p50_us", p50, Goal::AtMost(50.0));
        } else {
            figures.add("thread_probe_p50_us", p50);
        }
        figures.add(
            &format!("{mode}_probe_p99_us"),
            us(percentile(&samples, 0.99)),
        );
    }
    println!(
        "isolation: {} round trips of 64 bytes over a socket pair to a thread that echoes \
         them, {PROBE_PERIOD_MS} ms apart",
        floor.len()
    );
    figures.add("socket_rt_p50_us", us(percentile(&floor, 0.5)));
    Ok(())
}

/// Context for the probe of a process: one small message over a socket pair to a thread
/// that echoes it, after the same idle time as the probes (a wake-up each way, no more).
fn socket_floor(samples: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::{Read, Write};
    let (mut here, mut there) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut message = [0u8; 64];
        while there.read_exact(&mut message).is_ok() && there.write_all(&message).is_ok() {}
    });
    let mut message = [0u8; 64];
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(Duration::from_millis(PROBE_PERIOD_MS));
        let began = Instant::now();
        here.write_all(&message)?;
        here.read_exact(&mut message)?;
        latencies.push(began.elapsed());
    }
    drop(here);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    latencies.sort();
    Ok(latencies)
}

/// 100 instances in each mode: start, resident memory, stop, leftovers.
fn many(
    artifacts: &Artifacts,
    dirs: &Dirs,
    work: &Path,
    quick: bool,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let runs = if quick { 1 } else { 3 };
    for (mode, head) in [
        ("thread", ""),
        ("isolated", "[host]\nisolation = \"process\"\n"),
    ] {
        let config = write_config(work, &format!("{mode}.toml"), INSTANCES, head)?;
        let (mut starts, mut stops, mut left) = (Vec::new(), Vec::new(), 0);
        for run in 0..runs {
            let host = Host::start(&artifacts.balut, dirs, Some(&config))?;
            starts.push(ms(host.wait_ready(Duration::from_secs(120))? - host.spawned));
            let (running, listed) = host.running()?;
            ensure!(
                running == INSTANCES && listed == INSTANCES,
                "{running} of {listed} {mode} containers running, expected {INSTANCES}"
            );
            let children = host.isolated_children()?;
            let last = run + 1 == runs;
            if last {
                // Let the start-up's transient allocations settle.
                std::thread::sleep(Duration::from_secs(1));
                figures.add(
                    &format!("{mode}_host_rss_kib"),
                    proc_kib(host.pid(), "status", "VmRSS:")?,
                );
                if mode == "isolated" {
                    resident(&host, &children, figures)?;
                }
            }
            let (stopped, status) = host.terminate(Duration::from_secs(60))?;
            ensure!(status.success(), "the {mode} host exited with {status}");
            stops.push(ms(stopped));
            if mode == "isolated" {
                ensure!(
                    children.len() == INSTANCES,
                    "the host has {} isolated children, expected {INSTANCES}",
                    children.len()
                );
                // Each process is gone once its host is: none is left to the system.
                left += children.iter().filter(|pid| is_isolated(**pid)).count();
            }
        }
        println!(
            "isolation: {INSTANCES} {mode} instances, host spawned -> /readyz 200 and \
             SIGTERM -> exit, median of {runs}: {starts:.1?} ms, {stops:.1?} ms"
        );
        let start = median(starts);
        if mode == "isolated" {
            figures.add_goal("isolated_left_after_stop", left as f64, Goal::AtMost(0.0));
            figures.add_goal("isolated_start_100_ms", start, Goal::AtMost(1000.0));
        } else {
            figures.add("thread_start_100_ms", start);
        }
        figures.add(&format!("{mode}_stop_100_ms"), median(stops));
    }
    Ok(())
}

/// What the idle isolated processes hold: resident (as the API shows it) and proportional
/// (shared pages divided among the processes that map them).
fn resident(host: &Host, children: &[u32], figures: &mut Figures) -> anyhow::Result<()> {
    let list = host.get("/v1/containers")?;
    let rss: Vec<f64> = list["containers"]
        .as_array()
        .context("/v1/containers has no list of containers")?
        .iter()
        .filter_map(|c| c["process"]["rss_bytes"].as_f64())
        .map(|bytes| bytes / 1024.0)
        .collect();
    ensure!(rss.len() == INSTANCES, "{} processes shown", rss.len());
    let pss = children
        .iter()
        .map(|pid| proc_kib(*pid, "smaps_rollup", "Pss:"))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    println!("isolation: resident memory of the {INSTANCES} idle processes (median)");
    figures.add("isolated_idle_rss_kib", median(rss));
    figures.add("isolated_idle_pss_kib", median(pss));
    Ok(())
}

/// A container that segfaults in each first health check, restarted at once each time.
fn crashes(
    artifacts: &Artifacts,
    dirs: &Dirs,
    work: &Path,
    quick: bool,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let cycles = if quick { 20 } else { 100 };
    // Ready for 1 ms resets the restart count: every restart is a first retry, which has
    // no delay; the rest only keeps any other retry at 1 ms and quarantine away.
    let config = format!(
        "[containers.x]\nplugin = \"chaos\"\nisolation = \"process\"\nrestart = \"on-failure\"\n\
         config = {{ segfault_in = \"health\" }}\n\
         [containers.x.liveness]\nperiod_ms = {CRASH_PERIOD_MS}\n\
         [containers.x.readiness]\ndisabled = true\n\
         [containers.x.backoff]\ninitial_ms = 1\nmax_ms = 1\njitter = 0.0\nreset_after_ms = 1\n\
         max_restarts = 1000000\nwindow_ms = 1\n"
    );
    let path = work.join("crash.toml");
    std::fs::write(&path, config)?;
    let host = Host::start(&artifacts.balut, dirs, Some(&path))?;
    let events = host.events()?;
    let (mut restarts, mut detections, mut decisions) = (Vec::new(), Vec::new(), Vec::new());
    let (mut running_at, mut failed_at): (Option<Instant>, Option<Instant>) = (None, None);
    let mut path_of_one: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while restarts.len() < cycles {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, event) = events
            .recv_timeout(left)
            .with_context(|| format!("{} of {cycles} restarts seen", restarts.len()))?;
        if event["type"] != "state" || event["container"] != "x" {
            continue;
        }
        let to = event["to"].as_str().unwrap_or_default();
        if failed_at.is_some() && restarts.is_empty() {
            path_of_one.push(to.to_owned());
        }
        match to {
            "failed" => {
                let reason = event["reason"].as_str().unwrap_or_default();
                ensure!(reason.contains("SIGSEGV"), "x failed otherwise: {reason}");
                if let Some(running) = running_at.take() {
                    detections.push(at - running);
                }
                failed_at = Some(at);
            }
            "starting" => decisions.extend(failed_at.map(|failed| at - failed)),
            "running" => {
                if let Some(failed) = failed_at.take() {
                    restarts.push(at - failed);
                }
                running_at = Some(at);
            }
            "quarantined" | "stopped" => bail!("x went {to}: {event}"),
            _ => {}
        }
    }
    drop(events);
    let children = host.isolated_children()?;
    host.terminate(Duration::from_secs(30))?;
    restarts.sort();
    detections.sort();
    decisions.sort();
    println!(
        "isolation: {cycles} crashes (SIGSEGV in the first health check, {CRASH_PERIOD_MS} ms \
         after each start): failed -> {} (failed -> starting: median {:.2} ms); {} processes \
         of the host's left at the end",
        path_of_one.join(" -> "),
        ms(percentile(&decisions, 0.5)),
        children.len()
    );
    figures.add_goal(
        "isolated_crash_restart_p50_ms",
        ms(percentile(&restarts, 0.5)),
        Goal::AtMost(50.0),
    );
    figures.add(
        "isolated_crash_restart_p90_ms",
        ms(percentile(&restarts, 0.9)),
    );
    figures.add(
        "isolated_crash_detect_p50_ms",
        ms(percentile(&detections, 0.5)) - CRASH_PERIOD_MS as f64,
    );
    // The one live process: a crashed one still there (zombie or not) would show here.
    figures.add_goal(
        "isolated_processes_after_crashes",
        children.len() as f64,
        Goal::AtMost(1.0),
    );
    Ok(())
}
