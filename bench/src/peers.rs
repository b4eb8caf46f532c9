//! `peers`: the same small workload run by Balut (containers on threads of the host),
//! Balut in process mode (`isolation = "process"` in each container's entry) and
//! supervisord, side by side in one run, at N = 10 and 100 workers (and 500 in a full run).
//!
//! The workload: N long-running workers that each append one line to a file of their own
//! every second. For Balut, N `ticker` containers (`interval_ms = 1000`); for supervisord,
//! N `[program:tK]` entries running `peer-worker PATH` (bench/src/bin/peer-worker.rs, the
//! same work; `startsecs = 0`, `autorestart = true`). Per system and N:
//!
//! - `start_ms`: process spawned -> all N running (Balut: `/readyz` 200; supervisord: every
//!   process `RUNNING` in `supervisor.getAllProcessInfo`, polled over XML-RPC);
//! - `rss_per_worker_kib`: VmRSS of every process involved (the host or supervisord, and
//!   their children), summed, divided by N; `pss_per_worker_kib` the same of `Pss:` in
//!   `smaps_rollup` (shared pages divided among the processes that map them);
//! - `idle_cpu_pct`: the time on a CPU of every thread of those processes (first field of
//!   `/proc/PID/task/TID/schedstat`, in ns) over an idle window, % of one core;
//! - `restart_p50_ms`, `restart_p99_ms`: a worker failed -> running again. supervisord and
//!   Balut process mode: SIGKILL to the worker's process -> a new pid `RUNNING` (supervisord,
//!   polled over XML-RPC) or the container's `running` event (Balut, `/v1/events`). Balut
//!   thread mode has no process of its own to kill: the worker fails by itself (`ticker`'s
//!   `fail_file`: at its next tick it reports a failure, with the time in its reason) ->
//!   the host fails it, tears it down and starts a new instance -> its `running` event;
//! - `status_cli_ms`: wall time of `balut status` / `supervisorctl status` (median);
//! - `status_api_ms`: `GET /v1/containers` / XML-RPC `supervisor.getAllProcessInfo` (median);
//! - `stop_ms`: stop everything: SIGTERM -> host exit / `supervisorctl stop all`.
//!
//! Ratios (`peers_nN_FIGURE_ratio`: Balut threads / supervisord;
//! `peers_nN_FIGURE_process_ratio`: Balut processes / supervisord) are below 1 where Balut
//! is ahead. supervisord is installed when missing (apt-get, else pip).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Artifacts;
use crate::host::{Dirs, Host, children_of, proc_kib};
use crate::report::{Figures, median, ms, number, percentile};

/// The figures of one system at one N, in the order of `FIGURES`.
type Row = [f64; 9];

/// Each figure's name (after `peers_nN_SYSTEM_`) and what it is, for the printed table.
const FIGURES: [(&str, &str); 9] = [
    ("start_ms", "launch -> all running (ms)"),
    ("rss_per_worker_kib", "RSS per worker (KiB)"),
    ("pss_per_worker_kib", "PSS per worker (KiB)"),
    ("idle_cpu_pct", "idle CPU (% of a core)"),
    ("restart_p50_ms", "failed -> running, p50 (ms)"),
    ("restart_p99_ms", "failed -> running, p99 (ms)"),
    ("status_cli_ms", "status command (ms)"),
    ("status_api_ms", "status API call (ms)"),
    ("stop_ms", "stop all (ms)"),
];

/// How long each measurement takes in one run.
struct Plan {
    idle: Duration,
    kills: usize,
    status_runs: usize,
}

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let supervisord = install_supervisord()?;
    let sizes: &[usize] = if quick { &[10, 100] } else { &[10, 100, 500] };
    let plan = Plan {
        idle: Duration::from_secs(if quick { 3 } else { 5 }),
        kills: 10,
        status_runs: if quick { 5 } else { 10 },
    };
    for &n in sizes {
        let thread = balut(artifacts, n, false, &plan).context("balut (threads)")?;
        let process = balut(artifacts, n, true, &plan).context("balut (processes)")?;
        let peer = supervisor(artifacts, &supervisord, n, &plan).context("supervisord")?;
        println!("peers: N = {n}\n{}", table(&thread, &process, &peer));
        for (i, (figure, _)) in FIGURES.iter().enumerate() {
            figures.add(&format!("peers_n{n}_balut_{figure}"), thread[i]);
            figures.add(&format!("peers_n{n}_balut_process_{figure}"), process[i]);
            figures.add(&format!("peers_n{n}_supervisord_{figure}"), peer[i]);
            let stem = figure
                .trim_end_matches("_ms")
                .trim_end_matches("_kib")
                .trim_end_matches("_pct");
            figures.add(&format!("peers_n{n}_{stem}_ratio"), thread[i] / peer[i]);
            figures.add(
                &format!("peers_n{n}_{stem}_process_ratio"),
                process[i] / peer[i],
            );
        }
    }
    Ok(())
}

/// The side-by-side table of one N.
fn table(thread: &Row, process: &Row, peer: &Row) -> String {
    let mut out = format!(
        "  {:<30} {:>10} {:>10} {:>12} {:>8} {:>8}\n",
        "", "balut", "balut-proc", "supervisord", "b/s", "bp/s"
    );
    for (i, (_, what)) in FIGURES.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {what:<30} {:>10} {:>10} {:>12} {:>8} {:>8}",
            number(thread[i]),
            number(process[i]),
            number(peer[i]),
            number(thread[i] / peer[i]),
            number(process[i] / peer[i]),
        );
    }
    out
}

/// supervisord's path: the one on PATH, else installed with apt-get, else with pip.
/// Prints how it was got and its version.
fn install_supervisord() -> anyhow::Result<PathBuf> {
    let how = if let Some(found) = which("supervisord") {
        format!("already installed ({})", found.display())
    } else if Command::new("apt-get")
        .args(["install", "-y", "supervisor"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && which("supervisord").is_some()
    {
        "installed now with `apt-get install -y supervisor`".to_owned()
    } else if Command::new("pip")
        .args(["install", "supervisor"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && which("supervisord").is_some()
    {
        "installed now with `pip install supervisor`".to_owned()
    } else {
        bail!("no supervisord, and neither apt-get nor pip could install it");
    };
    let path = which("supervisord").context("supervisord")?;
    let version = Command::new(&path).arg("--version").output()?;
    let package = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}", "supervisor"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!(", Debian package {}", String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    println!(
        "peers: supervisord {} {how}{package}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    Ok(path)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// VmRSS summed over `pids` (a process that is gone counts nothing), in KiB.
fn total_rss_kib(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| proc_kib(*pid, "status", "VmRSS:").ok())
        .sum()
}

/// `Pss:` of `smaps_rollup` summed over `pids`, in KiB.
fn total_pss_kib(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| proc_kib(*pid, "smaps_rollup", "Pss:").ok())
        .sum()
}

/// Nanoseconds on a CPU of every thread of `pids` so far (`/proc/PID/task/TID/schedstat`:
/// nanosecond resolution, where `/proc/PID/stat` counts 10 ms ticks).
fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            total += std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// CPU used by `pids` over `window` of wall time, as a percentage of one core.
fn cpu_percent(pids: &[u32], window: Duration) -> f64 {
    let (began, before) = (Instant::now(), cpu_ns(pids));
    std::thread::sleep(window);
    let used = cpu_ns(pids).saturating_sub(before);
    used as f64 / 1e9 / began.elapsed().as_secs_f64() * 100.0
}

/// The median wall time of running `command` `runs` times (it must succeed).
fn wall_median(command: &mut Command, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let began = Instant::now();
        let status = command.stdout(Stdio::null()).status()?;
        times.push(ms(began.elapsed()));
        ensure!(status.success(), "{command:?} exited with {status}");
    }
    Ok(median(times))
}

/// Balut with N `ticker` containers, on threads or each in a process of its own.
fn balut(artifacts: &Artifacts, n: usize, process: bool, plan: &Plan) -> anyhow::Result<Row> {
    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    std::fs::copy(&artifacts.ticker, dirs.plugins.join("libticker.so"))?;
    let out = work.path().join("out");
    std::fs::create_dir_all(&out)?;
    let isolation = if process {
        "isolation = \"process\"\n"
    } else {
        ""
    };
    let mut config = String::new();
    for i in 0..n {
        let log = out.join(format!("t{i}.log"));
        // On threads, the workers to be failed fail by themselves (see `fail_file`).
        let fail = if !process && i < plan.kills {
            format!(", fail_file = \"{}\"", fail_file(&out, i).display())
        } else {
            String::new()
        };
        let _ = write!(
            config,
            "[containers.t{i}]\nplugin = \"ticker\"\n{isolation}\
             config = {{ path = \"{}\", interval_ms = 1000{fail} }}\n",
            log.display()
        );
    }
    let path = work.path().join("balut.toml");
    std::fs::write(&path, config)?;

    let host = Host::start(&artifacts.balut, &dirs, Some(&path))?;
    let start = ms(host.wait_ready(Duration::from_secs(120))? - host.spawned);
    let (running, listed) = host.running()?;
    ensure!(
        running == n && listed == n,
        "{running} of {listed} containers running, expected {n}"
    );
    // Past the start-up, into the steady state.
    std::thread::sleep(Duration::from_millis(1500));
    let mut pids = vec![host.pid()];
    if process {
        let children = host.isolated_children()?;
        ensure!(children.len() == n, "{} isolated children", children.len());
        pids.extend(children);
    }
    let rss = total_rss_kib(&pids) / n as f64;
    let pss = total_pss_kib(&pids) / n as f64;
    let cpu = cpu_percent(&pids, plan.idle);

    let status_cli = wall_median(
        Command::new(&artifacts.balut).args(["status", "--addr", &host.addr]),
        plan.status_runs,
    )?;
    let mut api = Vec::new();
    for _ in 0..plan.status_runs * 10 {
        let began = Instant::now();
        host.get("/v1/containers")?;
        api.push(ms(began.elapsed()));
    }
    let status_api = median(api);

    let events = host.events()?;
    let mut restarts = Vec::with_capacity(plan.kills);
    for k in 0..plan.kills {
        let name = format!("t{}", k % n);
        // Nothing older than this restart is waited for.
        while events.try_recv().is_ok() {}
        let restart = if process {
            let status = host.get(&format!("/v1/containers/{name}"))?;
            let pid = status["process"]["pid"]
                .as_u64()
                .with_context(|| format!("{name} has no process: {status}"))?;
            let began = Instant::now();
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
            let running = next_state(&events, &name, "running", began)?;
            running.0 - began
        } else {
            // The worker fails by itself at its next tick (within a second): the time
            // runs from its report (the time in its reason) to the `running` event.
            std::fs::write(fail_file(&out, k % n), "")?;
            let failed = next_state(&events, &name, "failed", Instant::now())?;
            let reason = failed.1["reason"].as_str().unwrap_or_default();
            let reported = reason
                .split_once("(at unix_us ")
                .and_then(|(_, rest)| rest.split_once(')'))
                .and_then(|(us, _)| us.parse::<u64>().ok())
                .with_context(|| format!("{name} failed for another reason: {reason}"))?;
            let running = next_state(&events, &name, "running", failed.0)?;
            // The event's arrival on the wall clock, to compare with the plugin's.
            let arrived = std::time::SystemTime::now() - running.0.elapsed();
            let arrived_us = arrived.duration_since(std::time::UNIX_EPOCH)?.as_micros();
            Duration::from_micros(u64::try_from(arrived_us)?.saturating_sub(reported))
        };
        restarts.push(restart);
        // Let the host settle (and the next kill find a steady state).
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(events);
    restarts.sort();

    let (stopped, status) = host.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "the host exited with {status}");
    Ok([
        start,
        rss,
        pss,
        cpu,
        ms(percentile(&restarts, 0.5)),
        ms(percentile(&restarts, 0.99)),
        status_cli,
        status_api,
        ms(stopped),
    ])
}

/// The file that makes worker `i` fail when it is there (`ticker`'s `fail_file`).
fn fail_file(out: &Path, i: usize) -> PathBuf {
    out.join(format!("t{i}.fail"))
}

/// Waits (30 s at most from `since`) for `name`'s next state event to `to`: when it
/// arrived and the event. Quarantine ends the wait with an error.
fn next_state(
    events: &Receiver<(Instant, serde_json::Value)>,
    name: &str,
    to: &str,
    since: Instant,
) -> anyhow::Result<(Instant, serde_json::Value)> {
    let deadline = since + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, event) = events
            .recv_timeout(left)
            .with_context(|| format!("{name} did not become {to}"))?;
        if event["type"] == "state" && event["container"] == name {
            let now = event["to"].as_str().unwrap_or_default();
            ensure!(now != "quarantined", "{name} was quarantined");
            if now == to {
                return Ok((at, event));
            }
        }
    }
}

/// A running supervisord, killed on drop.
struct Supervisord {
    child: Child,
    /// Its XML-RPC listener, `127.0.0.1:PORT`.
    addr: String,
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Supervisord {
    /// One XML-RPC call with string parameters; the response's text. As supervisorctl,
    /// Python's `xmlrpc.client` and curl do it: a connection of its own, the request in one
    /// write (an HTTP client writing headers and body apart meets Nagle and delayed ACKs
    /// on supervisord's keep-alive connections: 40 ms more per call).
    fn call(&self, method: &str, params: &[&str]) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let params: String = params
            .iter()
            .map(|p| format!("<param><value><string>{p}</string></value></param>"))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName>\
             <params>{params}</params></methodCall>"
        );
        let request = format!(
            "POST /RPC2 HTTP/1.0\r\nHost: {}\r\nContent-Type: text/xml\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        ensure!(
            text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
            "{method}: {text:.500}"
        );
        ensure!(!text.contains("<fault>"), "{method}: {text:.500}");
        Ok(text)
    }

    /// How many processes are `RUNNING`.
    fn running(&self) -> anyhow::Result<usize> {
        Ok(self
            .call("supervisor.getAllProcessInfo", &[])?
            .matches("<string>RUNNING</string>")
            .count())
    }

    /// The pid of `name`, when it is `RUNNING`.
    fn running_pid(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let text = self.call("supervisor.getProcessInfo", &[name])?;
        if !text.contains("<string>RUNNING</string>") {
            return Ok(None);
        }
        let compact: String = text.split_whitespace().collect();
        let pid = compact
            .split_once("<name>pid</name><value><int>")
            .and_then(|(_, rest)| rest.split_once("</int>"))
            .and_then(|(pid, _)| pid.parse().ok())
            .with_context(|| format!("no pid in {text:.500}"))?;
        Ok(Some(pid))
    }
}

/// supervisord with N `peer-worker` programs.
fn supervisor(
    artifacts: &Artifacts,
    supervisord: &Path,
    n: usize,
    plan: &Plan,
) -> anyhow::Result<Row> {
    let work = tempfile::tempdir()?;
    let out = work.path().join("out");
    std::fs::create_dir_all(&out)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = work.path().display();
    // Root needs no `user =`; its warning about that is only a log line. minfds: three
    // pipes per child.
    let mut config = format!(
        "[supervisord]\nnodaemon = true\nlogfile = {dir}/supervisord.log\n\
         pidfile = {dir}/supervisord.pid\nchildlogdir = {dir}\nloglevel = warn\n\
         minfds = 4096\n\n\
         [inet_http_server]\nport = 127.0.0.1:{port}\n\n\
         [rpcinterface:supervisor]\n\
         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl = {url}\n\n"
    );
    for i in 0..n {
        let _ = write!(
            config,
            "[program:t{i}]\ncommand = {} {}\nstartsecs = 0\nautorestart = true\n\
             stdout_logfile = NONE\nstderr_logfile = NONE\n\n",
            artifacts.peer_worker.display(),
            out.join(format!("t{i}.log")).display()
        );
    }
    let conf = work.path().join("supervisord.conf");
    std::fs::write(&conf, config)?;

    let spawned = Instant::now();
    let child = Command::new(supervisord)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting supervisord")?;
    let sup = Supervisord {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = spawned + Duration::from_secs(120);
    let start = loop {
        // Refused until supervisord listens.
        if sup.running().is_ok_and(|running| running == n) {
            break ms(spawned.elapsed());
        }
        ensure!(
            Instant::now() < deadline,
            "not all {n} programs RUNNING in time"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let supervisord_pid = sup.child.id();
    let mut pids = vec![supervisord_pid];
    pids.extend(children_of(supervisord_pid)?);
    ensure!(
        pids.len() == n + 1,
        "supervisord has {} children",
        pids.len() - 1
    );
    let rss = total_rss_kib(&pids) / n as f64;
    let pss = total_pss_kib(&pids) / n as f64;
    let cpu = cpu_percent(&pids, plan.idle);

    let ctl = || {
        let mut command = Command::new("supervisorctl");
        command.arg("-c").arg(&conf);
        command
    };
    let status_cli = wall_median(ctl().arg("status"), plan.status_runs)?;
    let mut api = Vec::new();
    for _ in 0..plan.status_runs * 10 {
        let began = Instant::now();
        sup.call("supervisor.getAllProcessInfo", &[])?;
        api.push(ms(began.elapsed()));
    }
    let status_api = median(api);

    let mut restarts = Vec::with_capacity(plan.kills);
    for k in 0..plan.kills {
        let name = format!("t{}", k % n);
        let old = sup
            .running_pid(&name)?
            .with_context(|| format!("{name} is not RUNNING"))?;
        let began = Instant::now();
        kill(Pid::from_raw(i32::try_from(old)?), Signal::SIGKILL)?;
        loop {
            if sup.running_pid(&name)?.is_some_and(|pid| pid != old) {
                restarts.push(began.elapsed());
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(30),
                "{name} did not run again"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    restarts.sort();

    let began = Instant::now();
    let status = ctl().args(["stop", "all"]).stdout(Stdio::null()).status()?;
    let stop = ms(began.elapsed());
    ensure!(
        status.success(),
        "supervisorctl stop all exited with {status}"
    );
    let left: HashSet<u32> = children_of(supervisord_pid)?.into_iter().collect();
    ensure!(
        left.is_empty(),
        "{} programs left after stop all",
        left.len()
    );
    Ok([
        start,
        rss,
        pss,
        cpu,
        ms(percentile(&restarts, 0.5)),
        ms(percentile(&restarts, 0.99)),
        status_cli,
        status_api,
        stop,
    ])
}
