//! `reload_under_load`: one `http-echo` container under continuous HTTP load while its
//! plugin file is hot-reloaded again and again, in two setups side by side, each in a host
//! of its own:
//!
//! - `owned`: the plugin binds its own port (`config = { port = P }`); a reload stops the
//!   old instance (closing its socket) before the new one binds again (stop-first, the
//!   default without held sockets);
//! - `held`: the host holds the socket (`[containers.web.listen] http = "127.0.0.1:P"`); a
//!   reload starts the new instance beside the old one on that socket, and stops the old one
//!   once the new one is ready (overlap, the default with held sockets).
//!
//! Four client threads send `GET /` without pause, a new connection each (`Connection:
//! close`, 2 s timeouts), while the reloads happen one after the other; each request's
//! start, end and outcome are kept, and so are the reload steps and the host's events, to
//! tell when the failures and the longest gaps between answers happened.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::Value;

use crate::Artifacts;
use crate::host::{Dirs, Host};
use crate::report::{Figures, Goal, ms, number, percentile};

/// Client threads, each one request at a time.
const CLIENTS: usize = 4;
/// Connect, write and read timeout of each request.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A client's pause after a failed request: without it, refused connections (which fail in
/// microseconds) would be counted by the thousand per reload, and the spinning clients would
/// take the cores the reload needs.
const FAILURE_PAUSE: Duration = Duration::from_millis(1);
/// Load without a reload: before the first, between two (after the previous one is done)
/// and after the last.
const SETTLE: Duration = Duration::from_millis(100);
/// The longest one reload may take.
const RELOAD_LIMIT: Duration = Duration::from_secs(30);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// Who holds the container's listening socket.
#[derive(Debug, Clone, Copy)]
enum Socket {
    /// The plugin binds it (`config = { port = P }`): stop-first reloads.
    Owned,
    /// The host holds it (`[containers.web.listen]`): overlapping reloads.
    Held,
}

impl Socket {
    fn key(self) -> &'static str {
        match self {
            Self::Owned => "owned",
            Self::Held => "held",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Owned => "plugin's socket, stop-first",
            Self::Held => "host's socket, overlap",
        }
    }

    fn config(self, port: u16) -> String {
        match self {
            Self::Owned => {
                format!("[containers.web]\nplugin = \"http-echo\"\nconfig = {{ port = {port} }}\n")
            }
            Self::Held => format!(
                "[containers.web]\nplugin = \"http-echo\"\n\
                 [containers.web.listen]\nhttp = \"127.0.0.1:{port}\"\n"
            ),
        }
    }
}

/// One request: when it began and ended, and why it failed (`None`: a 200 arrived).
struct Sample {
    began: Instant,
    ended: Instant,
    failure: Option<String>,
}

/// One reload: the `rename`, and the `reloaded` event (the new generation running, the old
/// instance stopped).
struct Step {
    renamed: Instant,
    /// The rename on the wall clock, to find it in the host's log.
    wall: SystemTime,
    done: Instant,
}

/// What one setup measured.
struct Run {
    socket: Socket,
    /// Every request of every client, in the order they began.
    samples: Vec<Sample>,
    steps: Vec<Step>,
    /// The renames and the host's events (`/v1/events`, when they arrived), in order.
    timeline: Vec<(Instant, String)>,
}

/// The figures of one setup, and what explains them.
struct Summary {
    sent: usize,
    failed: usize,
    max_gap: Duration,
    /// The median of each reload's longest gap.
    gap_p50: Duration,
    /// The median and the longest of the windows with no reload under way.
    quiet_gap_p50: Duration,
    quiet_gap: Duration,
    p50: Duration,
    p99: Duration,
    reload_p50: Duration,
    kinds: BTreeMap<String, usize>,
}

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let reloads = if quick { 20 } else { 100 };
    let logs = artifacts.target.join("balut-bench");
    std::fs::create_dir_all(&logs)?;
    let mut summaries = Vec::new();
    for socket in [Socket::Owned, Socket::Held] {
        let log = logs.join(format!("reload_under_load-{}.log", socket.key()));
        let run = measure(artifacts, socket, reloads, &log)?;
        summaries.push((socket, summarize(&run)?));
        println!("  (host log: {})", log.display());
    }
    print_table(reloads, &summaries);
    for (socket, s) in &summaries {
        let key = socket.key();
        let name = |what: &str| format!("reload_load_{key}_{what}");
        figures.add(&name("sent"), s.sent as f64);
        let (failed, gap) = (s.failed as f64, ms(s.max_gap));
        match socket {
            Socket::Owned => {
                figures.add(&name("failed"), failed);
                figures.add(&name("max_gap_ms"), gap);
            }
            Socket::Held => {
                figures.add_goal(&name("failed"), failed, Goal::AtMost(0.0));
                figures.add_goal(&name("max_gap_ms"), gap, Goal::AtMost(5.0));
            }
        }
        figures.add(&name("gap_p50_ms"), ms(s.gap_p50));
        figures.add(&name("quiet_max_gap_ms"), ms(s.quiet_gap));
        figures.add(&name("quiet_gap_p50_ms"), ms(s.quiet_gap_p50));
        figures.add(&name("p50_ms"), ms(s.p50));
        figures.add(&name("p99_ms"), ms(s.p99));
    }
    Ok(())
}

/// A free loopback port (free when asked; nothing else here takes ports).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a host with the container in `socket`'s setup, puts it under load and reloads its
/// plugin `reloads` times, each time after the previous reload is done.
fn measure(
    artifacts: &Artifacts,
    socket: Socket,
    reloads: usize,
    log: &Path,
) -> anyhow::Result<Run> {
    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging)?;
    let original = std::fs::read(&artifacts.http_echo)
        .with_context(|| format!("reading {}", artifacts.http_echo.display()))?;
    let target = dirs.plugins.join("libhttp_echo.so");
    std::fs::write(&target, &original)?;
    let port = free_port()?;
    let config = work.path().join("balut.toml");
    std::fs::write(&config, socket.config(port))?;
    let host = Host::start_logged(&artifacts.balut, &dirs, Some(&config), Some(log))?;
    host.wait_ready(Duration::from_secs(60))?;
    let first = host.get("/v1/containers/web")?["generation"]
        .as_u64()
        .context("web has no generation")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    request(addr).map_err(|e| anyhow!("GET / before the load: {e}"))?;
    let events = host.events()?;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<Vec<Sample>>> = (0..CLIENTS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || client(addr, &stop))
        })
        .collect();
    let mut timeline = Vec::new();
    let stepped = (|| {
        let mut steps = Vec::with_capacity(reloads);
        std::thread::sleep(SETTLE);
        for i in 0..reloads {
            // A new version: the same library with different trailing bytes (a new hash).
            let mut bytes = original.clone();
            bytes.extend_from_slice(format!("version {i}").as_bytes());
            let staged = staging.join("libhttp_echo.so");
            std::fs::write(&staged, &bytes)?;
            let generation = first + i as u64 + 1;
            let (renamed, wall) = (Instant::now(), SystemTime::now());
            std::fs::rename(&staged, &target)?;
            timeline.push((renamed, "rename".to_owned()));
            let done = wait_reloaded(&events, generation, &mut timeline)?;
            // The event says so; the API agrees.
            host.wait_generation("web", generation, RELOAD_LIMIT)?;
            steps.push(Step {
                renamed,
                wall,
                done,
            });
            std::thread::sleep(SETTLE);
        }
        anyhow::Ok(steps)
    })();
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for client in clients {
        samples.extend(
            client
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))?,
        );
    }
    let steps = stepped?;
    while let Ok((at, event)) = events.try_recv() {
        timeline.push((at, label(&event)));
    }
    drop(host);
    samples.sort_by_key(|s| s.began);
    Ok(Run {
        socket,
        samples,
        steps,
        timeline,
    })
}

/// Waits for the `reloaded` event of `generation`, keeping every event on the way.
fn wait_reloaded(
    events: &Receiver<(Instant, Value)>,
    generation: u64,
    timeline: &mut Vec<(Instant, String)>,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + RELOAD_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, event) = events
            .recv_timeout(left)
            .with_context(|| format!("no `reloaded` event for generation {generation}"))?;
        timeline.push((at, label(&event)));
        match event["type"].as_str() {
            Some("reloaded") if event["to_generation"].as_u64() == Some(generation) => {
                return Ok(at);
            }
            Some("rolled_back" | "refused") => bail!("reload to generation {generation}: {event}"),
            _ => {}
        }
    }
}

/// An event without its generations: `state stopping`, `replaced`, `readiness false`.
fn label(event: &Value) -> String {
    let kind = event["type"].as_str().unwrap_or("?");
    match kind {
        "state" => format!("state {}", event["to"].as_str().unwrap_or("?")),
        "readiness" => format!("readiness {}", event["ready"]),
        "health" => format!("health {}", event["healthy"]),
        other => other.to_owned(),
    }
}

/// One client: requests until `stop`, pausing briefly after each failure.
fn client(addr: SocketAddr, stop: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let began = Instant::now();
        let failure = request(addr).err();
        let ended = Instant::now();
        let failed = failure.is_some();
        samples.push(Sample {
            began,
            ended,
            failure,
        });
        if failed {
            std::thread::sleep(FAILURE_PAUSE);
        }
    }
    samples
}

/// `GET /` on a new connection: `Ok` for a 200, else what went wrong, e.g. `connect:
/// ConnectionRefused`, `read: timeout`, `status 503`.
fn request(addr: SocketAddr) -> Result<(), String> {
    fn io(stage: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("{stage}: timeout"),
            kind => format!("{stage}: {kind:?}"),
        }
    }
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io("connect"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(io("connect"))?;
    stream.write_all(REQUEST).map_err(io("write"))?;
    let mut answer = Vec::with_capacity(256);
    stream.read_to_end(&mut answer).map_err(io("read"))?;
    if answer.is_empty() {
        return Err("closed without an answer".to_owned());
    }
    let status = answer
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok());
    match status {
        Some("200") => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None => Err("not an HTTP answer".to_owned()),
    }
}

/// The last entry of the timeline at or before `at`, and the last rename at or before it.
fn context_of(timeline: &[(Instant, String)], at: Instant) -> (&str, Option<Instant>) {
    let before = timeline.partition_point(|(t, _)| *t <= at);
    let last = before
        .checked_sub(1)
        .map_or("before the first reload", |i| timeline[i].1.as_str());
    let rename = timeline[..before]
        .iter()
        .rev()
        .find(|(_, l)| l == "rename")
        .map(|(t, _)| *t);
    (last, rename)
}

/// Offset of `at` from `from`, in ms, signed.
fn offset_ms(at: Instant, from: Instant) -> f64 {
    if at >= from {
        ms(at - from)
    } else {
        -ms(from - at)
    }
}

/// The figures of one run, printing what explains them: the failures by kind and by the
/// last event before they began, where each reload's longest gap between answers was, and
/// the events around the longest of all.
fn summarize(run: &Run) -> anyhow::Result<Summary> {
    let key = run.socket.key();
    let mut timeline = run.timeline.clone();
    timeline.sort_by_key(|(t, _)| *t);
    let mut answered: Vec<Instant> = Vec::new();
    let mut latencies = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    // (kind, last event before it began) -> count, first and last offset from the rename.
    let mut phases: BTreeMap<(String, String), (usize, f64, f64)> = BTreeMap::new();
    for sample in &run.samples {
        let Some(failure) = &sample.failure else {
            answered.push(sample.ended);
            latencies.push(sample.ended - sample.began);
            continue;
        };
        *kinds.entry(failure.clone()).or_default() += 1;
        let (last, rename) = context_of(&timeline, sample.began);
        let offset = rename.map_or(f64::NAN, |r| offset_ms(sample.began, r));
        let entry = phases.entry((failure.clone(), last.to_owned())).or_insert((
            0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ));
        entry.0 += 1;
        entry.1 = entry.1.min(offset);
        entry.2 = entry.2.max(offset);
    }
    ensure!(answered.len() >= 2, "{key}: fewer than two answers");
    answered.sort();
    latencies.sort();
    let first = run.samples.first().map_or_else(Instant::now, |s| s.began);
    let end = answered.last().copied().unwrap_or(first);

    // Gaps between two answers in a row (across all clients).
    let gaps: Vec<(Instant, Instant)> = answered.windows(2).map(|w| (w[0], w[1])).collect();
    let length = |(a, b): &(Instant, Instant)| *b - *a;
    let (gap_from, gap_to) = gaps.iter().copied().max_by_key(length).context("no gap")?;
    // Each reload's longest gap: one that overlaps the reload (from its rename to its
    // `reloaded` event).
    let per_reload: Vec<(Instant, Instant)> = run
        .steps
        .iter()
        .filter_map(|step| {
            gaps.iter()
                .filter(|(a, b)| *b > step.renamed && *a < step.done)
                .max_by_key(|g| length(g))
                .copied()
        })
        .collect();
    // The reload the longest gap of all ended in (or after).
    let worst_step = run
        .steps
        .partition_point(|s| s.renamed < gap_to)
        .checked_sub(1);
    // The same with no reload under way: windows from `SETTLE` / 2 after one is done to the
    // next rename, and before the first; each window's longest gap that lies within it.
    let mut quiet_windows = vec![(first, run.steps.first().map_or(end, |s| s.renamed))];
    for (i, step) in run.steps.iter().enumerate() {
        let until = run.steps.get(i + 1).map_or(end, |s| s.renamed);
        quiet_windows.push((step.done + SETTLE / 2, until));
    }
    let mut quiet: Vec<Duration> = quiet_windows
        .iter()
        .filter_map(|(from, to)| {
            gaps.iter()
                .filter(|(a, b)| a >= from && b <= to)
                .map(length)
                .max()
        })
        .collect();
    quiet.sort();
    let mut reloads: Vec<Duration> = run.steps.iter().map(|s| s.done - s.renamed).collect();
    reloads.sort();

    println!(
        "reload_under_load [{key}: {}]: {} requests, {} failed; {} reloads, rename -> \
         `reloaded` p50 {:.1} ms, max {:.1} ms",
        run.socket.describe(),
        run.samples.len(),
        run.samples.len() - answered.len(),
        run.steps.len(),
        ms(percentile(&reloads, 0.5)),
        ms(reloads.last().copied().unwrap_or_default()),
    );
    for ((kind, last), (count, first, latest)) in &phases {
        println!(
            "  failed: {count} x {kind}, began after `{last}`, {first:+.1} to {latest:+.1} ms \
             from the rename"
        );
    }
    // Where each reload's longest gap began: after which event.
    let mut after: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for gap in &per_reload {
        after
            .entry(context_of(&timeline, gap.0).0)
            .or_default()
            .push(ms(length(gap)));
    }
    let after: Vec<String> = after
        .into_iter()
        .map(|(event, mut lengths)| {
            lengths.sort_by(f64::total_cmp);
            format!(
                "after `{event}` {} times ({})",
                lengths.len(),
                lengths
                    .iter()
                    .map(|l| format!("{l:.1}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    println!(
        "  each reload's longest gap (ms) began: {}; with no reload under way: median {:.2} \
         ms, at most {:.2} ms ({} windows of about {} ms)",
        after.join("; "),
        ms(percentile(&quiet, 0.5)),
        ms(quiet.last().copied().unwrap_or_default()),
        quiet.len(),
        SETTLE.as_millis() / 2
    );
    let mut per_reload: Vec<Duration> = per_reload.iter().map(length).collect();
    per_reload.sort();
    match worst_step.and_then(|i| run.steps.get(i).map(|s| (i, s))) {
        Some((i, step)) => {
            let from = step.renamed;
            let until = run.steps.get(i + 1).map_or(end, |s| s.renamed);
            let events: Vec<String> = timeline
                .iter()
                .filter(|(t, _)| *t >= from && *t < until)
                .map(|(t, l)| format!("{l} {:+.1}", offset_ms(*t, from)))
                .collect();
            println!(
                "  longest gap: {:.2} ms, from {:+.1} to {:+.1} ms after rename {} (at {}; \
                 `reloaded` {:+.1}); the events until the next rename, as they arrived (ms \
                 from the rename): {}",
                ms(gap_to - gap_from),
                offset_ms(gap_from, from),
                offset_ms(gap_to, from),
                i + 1,
                humantime::format_rfc3339_micros(step.wall),
                offset_ms(step.done, from),
                events.join(", ")
            );
        }
        None => println!(
            "  longest gap: {:.2} ms, before the first reload",
            ms(gap_to - gap_from)
        ),
    }
    Ok(Summary {
        sent: run.samples.len(),
        failed: run.samples.len() - answered.len(),
        max_gap: gap_to - gap_from,
        gap_p50: percentile(&per_reload, 0.5),
        quiet_gap_p50: percentile(&quiet, 0.5),
        quiet_gap: quiet.last().copied().unwrap_or_default(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        reload_p50: percentile(&reloads, 0.5),
        kinds,
    })
}

/// The two setups side by side.
fn print_table(reloads: usize, summaries: &[(Socket, Summary)]) {
    let mut kinds: Vec<&String> = summaries.iter().flat_map(|(_, s)| s.kinds.keys()).collect();
    kinds.sort();
    kinds.dedup();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |what: &str, value: &dyn Fn(&Summary) -> String| {
        rows.push((
            what.to_owned(),
            summaries.iter().map(|(_, s)| value(s)).collect(),
        ));
    };
    row("requests sent", &|s| s.sent.to_string());
    row("requests failed", &|s| s.failed.to_string());
    for kind in kinds {
        row(&format!("  {kind}"), &|s| {
            s.kinds.get(kind).copied().unwrap_or(0).to_string()
        });
    }
    row("longest gap between answers (ms)", &|s| {
        number(ms(s.max_gap))
    });
    row("each reload's longest gap, median (ms)", &|s| {
        number(ms(s.gap_p50))
    });
    row("no reload under way: longest gap (ms)", &|s| {
        number(ms(s.quiet_gap))
    });
    row("no reload under way: window's longest, median (ms)", &|s| {
        number(ms(s.quiet_gap_p50))
    });
    row("latency p50 (ms)", &|s| number(ms(s.p50)));
    row("latency p99 (ms)", &|s| number(ms(s.p99)));
    row("rename -> `reloaded` p50 (ms)", &|s| {
        number(ms(s.reload_p50))
    });
    let width = rows.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
    println!(
        "\nreload_under_load: {CLIENTS} clients (a connection per request), {reloads} reloads each"
    );
    let heads: Vec<String> = summaries
        .iter()
        .map(|(socket, _)| format!("{} ({})", socket.key(), socket.describe()))
        .collect();
    let column = heads.iter().map(String::len).max().unwrap_or(0).max(12);
    print!("{:<width$}", "");
    for head in &heads {
        print!("  {head:>column$}");
    }
    println!();
    for (what, values) in rows {
        print!("{what:<width$}");
        for value in values {
            print!("  {value:>column$}");
        }
        println!();
    }
}
