//! Zero-downtime reloads on sockets the host holds (`[containers.NAME.listen]`, interface
//! 1.3): the host binds the socket once and keeps it, http-echo serves on it, and a hot
//! reload starts the new version beside the running one (`reload = "overlap"`, the default
//! with held sockets) and stops the old one only once the new one is ready.
//!
//! - Under continuous load (4 client threads, a new connection per request), 100 reloads in
//!   thread mode and 20 in process mode fail no request; the longest gap between answers is
//!   printed (`[zero_downtime]` lines; run with `--nocapture`), bounded only against hangs.
//! - A new version that cannot start (fixture `echo-broken`) or refuses the state handed
//!   over (fixture `echo-state-v2`) is rolled back without a failed request: the old one
//!   never stopped.
//! - State survives a reload: http-echo's request count (`GET /count`) in both reload
//!   modes, ticker's tick numbers.
//! - Listen errors: an address in use fails that container only, naming the key, the
//!   address and the OS's reason; an address that is not one refuses the config.
//! - A Unix socket works the same, and its file goes with the container.
//! - `/v1/events` shows `replaced`, then `reloaded`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use balut_tests::{
    Host, Lib, PluginDir, Put, STATE_TIMEOUT, has_field, http_get, lib_bytes, sha12, toml_str,
    versioned_bytes,
};
use serde_json::Value;

use crate::hotplug::{first_stop_of, generation, wait_running_on};
use crate::supervise::last_error;
use crate::{echo_entry, terminate, terminate_cleanly, ticker_entry};

/// The plugin file under test.
const FILE: &str = "libhttp_echo.so";
/// Client threads of the load.
const CLIENTS: usize = 4;
/// A bound on the longest gap between answers that only catches a hang.
const HANG: Duration = Duration::from_secs(2);
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What `GET /` answers.
const MESSAGE: &str = "zero downtime";

// ---------------------------------------------------------------------------------------
// Clients.

/// Where the held socket listens.
#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// A loopback address free a moment ago (bound to port 0, read, closed).
    fn free_tcp() -> Target {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Target::Tcp(probe.local_addr().expect("local address"))
    }

    /// The value of `listen.http` in the config.
    fn config_value(&self) -> String {
        match self {
            Target::Tcp(addr) => addr.to_string(),
            Target::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

/// `GET path` over a new connection: status and body, or what went wrong.
fn get(target: &Target, path: &str) -> Result<(u16, String), String> {
    fn exchange(mut stream: impl Read + Write, path: &str) -> std::io::Result<Vec<u8>> {
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(raw)
    }
    let raw = match target {
        Target::Tcp(addr) => {
            let stream = TcpStream::connect_timeout(addr, REQUEST_TIMEOUT)
                .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
            let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
            let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            exchange(stream, path)
        }
        Target::Unix(socket) => {
            let stream = UnixStream::connect(socket)
                .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
            let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
            let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            exchange(stream, path)
        }
    }
    .map_err(|e| format!("exchange: {e} ({:?})", e.kind()))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("no complete response: {text:?}"));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `GET path`, which must answer 200; the body.
fn get_ok(target: &Target, path: &str) -> String {
    match get(target, path) {
        Ok((200, body)) => body,
        other => panic!("GET {path} on {target:?}: {other:?}"),
    }
}

/// `GET /count`: the requests http-echo has answered so far.
fn count(target: &Target) -> u64 {
    let body = get_ok(target, "/count");
    body.parse()
        .unwrap_or_else(|e| panic!("GET /count answered {body:?}: {e}"))
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    answered: Vec<Instant>,
    slowest: Duration,
    failures: Vec<String>,
}

/// Client threads sending `GET /` one after the other, each on a new connection, until
/// [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    clients: Vec<JoinHandle<ClientLog>>,
    started: Instant,
}

/// What the load saw.
struct LoadReport {
    answered: usize,
    failures: Vec<String>,
    longest_gap: Duration,
    slowest: Duration,
    took: Duration,
}

impl Load {
    /// Starts `clients` threads and waits until each has had an answer.
    fn start(target: &Target, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let clients = (0..clients)
            .map(|i| {
                let (target, stop, answered) = (target.clone(), stop.clone(), answered.clone());
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || client(i, &target, &stop, &answered, started))
                    .expect("spawn a client thread")
            })
            .collect::<Vec<_>>();
        let load = Load {
            stop,
            answered,
            clients,
            started,
        };
        let deadline = Instant::now() + STATE_TIMEOUT;
        while load.answered.load(Ordering::SeqCst) < 4 * load.clients.len() as u64 {
            assert!(Instant::now() < deadline, "the load got no answers");
            std::thread::sleep(Duration::from_millis(10));
        }
        load
    }

    /// Stops the clients and tells what they saw.
    fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let took = self.started.elapsed();
        let mut answered = Vec::new();
        let mut failures = Vec::new();
        let mut slowest = Duration::ZERO;
        for client in self.clients {
            let log = client.join().expect("a client thread panicked");
            answered.extend(log.answered);
            failures.extend(log.failures);
            slowest = slowest.max(log.slowest);
        }
        answered.sort();
        let longest_gap = answered
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        LoadReport {
            answered: answered.len(),
            failures,
            longest_gap,
            slowest,
            took,
        }
    }
}

fn client(
    i: usize,
    target: &Target,
    stop: &AtomicBool,
    answered: &AtomicU64,
    started: Instant,
) -> ClientLog {
    let mut log = ClientLog::default();
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let result = get(target, "/");
        let now = Instant::now();
        log.slowest = log.slowest.max(now - sent);
        match result {
            Ok((200, body)) if body == MESSAGE => {
                log.answered.push(now);
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, body)) => log.failures.push(format!(
                "client {i}, sent at +{:?}: answered {status} {body:?}",
                sent - started
            )),
            Err(e) => log
                .failures
                .push(format!("client {i}, sent at +{:?}: {e}", sent - started)),
        }
        // Continuous, but leaves the two cores some room for the reloads themselves.
        std::thread::sleep(Duration::from_millis(1));
    }
    log
}

impl LoadReport {
    /// Prints the figures, then checks that nothing failed and nothing hung.
    fn check(&self, what: &str) {
        eprintln!(
            "[zero_downtime] {what}: {} requests answered in {:?}, {} failed, longest gap between answers {:?}, slowest request {:?}",
            self.answered,
            self.took,
            self.failures.len(),
            self.longest_gap,
            self.slowest
        );
        for failure in self.failures.iter().take(20) {
            eprintln!("[zero_downtime] {what}: failed: {failure}");
        }
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} requests failed; the first ones:\n{}",
            self.failures.len(),
            self.failures.len() + self.answered,
            self.failures
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            self.longest_gap < HANG,
            "{what}: no answer for {:?}",
            self.longest_gap
        );
    }
}

// ---------------------------------------------------------------------------------------
// Hosts.

/// A `[containers.web]` entry for http-echo on the held socket `http` at `target`, with
/// `extra` lines (`isolation = ...`, `reload = ...`) in the container's table.
fn web_entry(target: &Target, extra: &str) -> String {
    format!(
        "[containers.web]\nplugin = \"http-echo\"\nconfig = {{ message = {} }}\n{extra}\n[containers.web.listen]\nhttp = {}\n",
        toml_str(MESSAGE),
        toml_str(target.config_value())
    )
}

/// A host with http-echo as container `web` on a held socket at `target` (and `more`
/// config), `web` running and answering.
fn web_host(dir: &mut PluginDir, target: &Target, extra: &str, more: &str) -> Host {
    dir.write_config(&format!("{}{more}", web_entry(target, extra)));
    let host = Host::start(dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    let line = host.wait_log_where(
        "web to listen on the socket the host holds",
        STATE_TIMEOUT,
        |l| l.contains("listening on a socket the host holds") && has_field(l, "container", "web"),
    );
    assert!(
        has_field(&line, "addr", &target.config_value()),
        "web listens elsewhere: {line}"
    );
    assert_eq!(get_ok(target, "/"), MESSAGE);
    host
}

/// Puts "version `n`" of `lib` as the http-echo file (a rename, as deployments do) and
/// waits until `web` runs on it.
fn reload_to(host: &Host, dir: &PluginDir, lib: Lib, n: u64) -> Value {
    let bytes = versioned_bytes(lib, n);
    dir.put(FILE, &bytes, Put::Rename);
    wait_running_on(host, "web", &sha12(&bytes))
}

/// Lines the host logged when an overlapping reload handed `web` to its new instance.
fn replacements(host: &Host) -> usize {
    host.lines_with(&["the new instance serves"])
        .iter()
        .filter(|l| has_field(l, "container", "web"))
        .count()
}

// ---------------------------------------------------------------------------------------
// Reloads under load.

/// `reloads` hot reloads of `web` (its table has `extra`, and they overlap if
/// `overlapping`) under load: no request fails.
fn reloads_under_load(extra: &str, overlapping: bool, reloads: u64, what: &str) {
    let target = Target::free_tcp();
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let host = web_host(&mut dir, &target, extra, "");
    let mut last = generation(&host.container("web"));
    let load = Load::start(&target, CLIENTS);
    let began = Instant::now();
    for n in 1..=reloads {
        let c = reload_to(&host, &dir, Lib::HttpEcho, n);
        let now = generation(&c);
        assert!(now > last, "reload {n}: generation {now} after {last}: {c}");
        last = now;
    }
    let took = began.elapsed();
    // The last old instance drains while the load goes on.
    std::thread::sleep(Duration::from_millis(300));
    let report = load.finish();
    eprintln!(
        "[zero_downtime] {what}: {reloads} reloads in {took:?} ({:?} each)",
        took / u32::try_from(reloads).expect("few reloads")
    );
    report.check(what);
    let expected = if overlapping {
        usize::try_from(reloads).expect("few reloads")
    } else {
        0
    };
    assert_eq!(replacements(&host), expected, "overlapping reloads");
    terminate_cleanly(host);
}

#[test]
fn a_hundred_reloads_under_load_fail_no_request() {
    reloads_under_load("", true, 100, "thread mode, 100 reloads");
}

#[test]
fn reloads_of_isolated_instances_under_load_fail_no_request() {
    reloads_under_load(
        "isolation = \"process\"",
        true,
        20,
        "process mode, 20 reloads",
    );
}

/// Stop-first on a held socket has a gap (the old instance stops before the new one
/// starts) but refuses nothing: connections wait in the socket's backlog.
#[test]
fn stop_first_reloads_on_a_held_socket_fail_no_request_either() {
    reloads_under_load(
        "reload = \"stop-first\"",
        false,
        10,
        "stop-first, thread mode, 10 reloads",
    );
}

// ---------------------------------------------------------------------------------------
// Rollbacks.

/// Puts `bytes` as the http-echo file and waits until that content is refused as rolled
/// back; returns the file's entry.
fn put_rolled_back(host: &Host, dir: &PluginDir, bytes: &[u8]) -> Value {
    let sha = sha12(bytes);
    dir.put(FILE, bytes, Put::Rename);
    let entry = host.wait_plugin(FILE, &format!("{sha} rolled back"), STATE_TIMEOUT, |p| {
        p["error_kind"] == "rolled_back" && p["refused_sha256"] == sha
    });
    assert_eq!(entry["status"], "error", "{entry}");
    entry
}

/// Checks that `web` still runs on its first generation, and was never stopped since
/// `mark`.
fn untouched(host: &Host, mark: usize, sha: &str) {
    let web = host.container("web");
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(generation(&web), 1, "{web}");
    assert_eq!(web["sha256"], sha, "{web}");
    assert_eq!(
        first_stop_of(&host.lines_since(mark), "web"),
        None,
        "web was stopped:\n{}",
        host.lines_since(mark).join("\n")
    );
}

#[test]
fn a_version_that_cannot_start_is_rolled_back_without_dropping_a_request() {
    let target = Target::free_tcp();
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let host = web_host(&mut dir, &target, "", "");
    let sha = sha12(&lib_bytes(Lib::HttpEcho));
    let events = host.events(None);
    let load = Load::start(&target, CLIENTS);

    let mark = host.mark();
    let entry = put_rolled_back(&host, &dir, &lib_bytes(Lib::EchoBroken));
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("fixture: this version of http-echo cannot start"),
        "the new version's error should show: {entry}"
    );
    assert_eq!(generation(&entry), 1, "the old generation: {entry}");
    let got = events.until("rolled_back", STATE_TIMEOUT, |e| e.kind() == "rolled_back");
    let rolled_back = got.last().expect("until returns the event");
    assert_eq!(rolled_back.data["file"], FILE, "{}", rolled_back.raw);
    assert_eq!(rolled_back.data["generation"], 1, "{}", rolled_back.raw);
    assert!(
        rolled_back.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fixture: this version of http-echo cannot start")),
        "{}",
        rolled_back.raw
    );
    assert!(
        !got.iter().any(|e| e.kind() == "replaced"),
        "nothing was replaced: {got:?}"
    );
    untouched(&host, mark, &sha);

    // The next good version reloads as usual, the load still running.
    let c = reload_to(&host, &dir, Lib::HttpEcho, 2);
    assert!(generation(&c) > 1, "{c}");
    let entry = host.wait_plugin_status(FILE, "loaded", STATE_TIMEOUT);
    assert!(entry["error_kind"].is_null(), "{entry}");
    events.until("replaced", STATE_TIMEOUT, |e| {
        e.kind() == "replaced" && e.data["container"] == "web"
    });
    let report = load.finish();
    report.check("a version that cannot start, then a good one");
    terminate_cleanly(host);
}

#[test]
fn state_in_a_format_the_new_version_refuses_is_a_clear_error_and_a_rollback() {
    let target = Target::free_tcp();
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let host = web_host(&mut dir, &target, "", "");
    let sha = sha12(&lib_bytes(Lib::HttpEcho));
    for _ in 0..7 {
        get_ok(&target, "/");
    }
    let before = count(&target);
    let load = Load::start(&target, CLIENTS);

    let mark = host.mark();
    let entry = put_rolled_back(&host, &dir, &lib_bytes(Lib::EchoStateV2));
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "state handed over in format version 1, which this version (reading 2) does not understand"
        ),
        "the error should name both versions: {entry}"
    );
    untouched(&host, mark, &sha);
    let report = load.finish();
    report.check("a refused hand-over");
    // The old instance kept its count (it only gave a copy away) and counts on.
    let after = count(&target);
    assert!(
        after > before + report.answered as u64,
        "count {after} after {before} and {} more",
        report.answered
    );
    terminate_cleanly(host);
}

/// Rollbacks where the old instance was stopped first (stop-first: it handed its state
/// over after `stop`, and the rollback gives it back) or runs in a process of its own: no
/// request fails, and the count goes on exactly.
#[test]
fn rollbacks_in_stop_first_and_process_mode_drop_nothing_and_keep_the_count() {
    for extra in ["reload = \"stop-first\"", "isolation = \"process\""] {
        let target = Target::free_tcp();
        let mut dir = PluginDir::with(&[Lib::HttpEcho]);
        let host = web_host(&mut dir, &target, extra, "");
        let before = count(&target);
        let load = Load::start(&target, CLIENTS);
        for (lib, says) in [
            (Lib::EchoStateV2, "(reading 2) does not understand"),
            (
                Lib::EchoBroken,
                "fixture: this version of http-echo cannot start",
            ),
        ] {
            let entry = put_rolled_back(&host, &dir, &lib_bytes(lib));
            let error = entry["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{extra}, {lib:?}: {entry}");
            let web = host.wait_state("web", "running", STATE_TIMEOUT);
            assert_eq!(generation(&web), 1, "{extra}: {web}");
        }
        std::thread::sleep(Duration::from_millis(300));
        let report = load.finish();
        report.check(&format!("rollbacks, {extra}"));
        // Every answer counted once: the `GET /count` above, and the load's.
        assert_eq!(
            count(&target),
            before + 1 + report.answered as u64,
            "{extra}"
        );
        terminate_cleanly(host);
    }
}

// ---------------------------------------------------------------------------------------
// State.

/// http-echo's request count survives a reload of `web` (its table has `extra`) exactly:
/// with no other traffic, what the old instance hands over is all it answered.
fn count_survives(extra: &str) {
    let target = Target::free_tcp();
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let host = web_host(&mut dir, &target, extra, "");
    // web_host sent one request.
    for _ in 0..9 {
        get_ok(&target, "/");
    }
    assert_eq!(count(&target), 10, "10 answered before this one");

    reload_to(&host, &dir, Lib::HttpEcho, 1);
    let line = host.wait_log("continuing the request count handed over", STATE_TIMEOUT);
    assert!(has_field(&line, "count", "11"), "{line}");
    assert_eq!(count(&target), 11, "the count goes on");
    get_ok(&target, "/");
    assert_eq!(count(&target), 13);

    reload_to(&host, &dir, Lib::HttpEcho, 2);
    assert_eq!(count(&target), 14, "and on, across a second reload");
    terminate_cleanly(host);
}

#[test]
fn the_request_count_survives_an_overlapping_reload() {
    count_survives("");
}

#[test]
fn the_request_count_survives_a_stop_first_reload() {
    count_survives("reload = \"stop-first\"");
}

#[test]
fn the_tick_count_survives_a_reload() {
    let mut dir = PluginDir::with(&[Lib::Ticker]);
    let ticks = dir.path().join("ticks.log");
    dir.write_config(&ticker_entry("ticker", &ticks, 50));
    let host = Host::start(&dir);
    host.wait_state("ticker", "running", STATE_TIMEOUT);
    host.wait_for("3 ticks", STATE_TIMEOUT, |_| crate::tick_lines(&ticks) >= 3);

    let bytes = versioned_bytes(Lib::Ticker, 1);
    dir.put("libticker.so", &bytes, Put::Rename);
    wait_running_on(&host, "ticker", &sha12(&bytes));
    let line = host.wait_log("continuing the tick count", STATE_TIMEOUT);
    let before = crate::tick_lines(&ticks);
    host.wait_for("3 more ticks", STATE_TIMEOUT, |_| {
        crate::tick_lines(&ticks) >= before + 3
    });
    terminate_cleanly(host);

    let text = std::fs::read_to_string(&ticks).expect("read the ticks");
    let numbers: Vec<u64> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a tick line: {l:?}"))
        })
        .collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "one count across the reload ({line})");
}

// ---------------------------------------------------------------------------------------
// Listen errors.

#[test]
fn an_address_in_use_fails_that_container_only_and_names_it() {
    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let busy = blocker.local_addr().expect("local address");
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}{}",
        web_entry(&Target::Tcp(busy), "restart = \"never\""),
        echo_entry("other", "bystander")
    ));
    let host = Host::start(&dir);
    let web = host.wait_until("web to fail for its socket", STATE_TIMEOUT, |h| {
        h.find_container("web")
            .filter(|c| last_error(c).contains("containers.web.listen.http"))
    });
    let error = last_error(&web);
    assert!(
        error.contains(&format!(
            "containers.web.listen.http: cannot listen on {busy}: "
        )),
        "{web}"
    );
    assert!(
        error.contains("Address already in use") && error.contains("os error"),
        "the OS's reason: {web}"
    );
    assert_eq!(web["state"], "failed", "{web}");

    // Nothing else is disturbed.
    host.wait_state("other", "running", STATE_TIMEOUT);
    let (status, body) = http_get(host.echo_addr("other"), "/");
    assert_eq!((status, body.as_str()), (200, "bystander"));
    let (status, body) = host.get("/healthz");
    assert_eq!(status, 200, "{body}");

    // Once the address is free, the container starts on it.
    drop(blocker);
    let (status, body) = host.post("/v1/containers/web/start");
    assert!(status < 300, "start answered {status}: {body}");
    host.wait_state("web", "running", STATE_TIMEOUT);
    assert_eq!(get_ok(&Target::Tcp(busy), "/"), MESSAGE);
    terminate_cleanly(host);
}

#[test]
fn an_address_that_is_not_one_refuses_the_config() {
    for (address, says) in [
        ("localhost:80", "is neither HOST:PORT"),
        ("unix:relative.sock", "a Unix socket path must be absolute"),
    ] {
        let out = crate::config::refused(&format!(
            "[containers.web]\nplugin = \"http-echo\"\n[containers.web.listen]\nhttp = {}\n",
            toml_str(address)
        ));
        assert!(
            out.stderr.contains(says) && out.stderr.contains(address),
            "{address}: {}",
            out.stderr
        );
        // The TOML error points at the line (`[containers.web.listen]` is on line 3).
        assert!(
            out.stderr.contains("line 4") && out.stderr.contains(&format!("http = \"{address}\"")),
            "{address}: {}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------
// Unix sockets.

#[test]
fn a_unix_socket_serves_across_reloads_and_goes_with_its_container() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let path = dir.path().join("web.sock");
    let target = Target::Unix(path.clone());
    let host = web_host(&mut dir, &target, "", "");

    let load = Load::start(&target, CLIENTS);
    for n in 1..=5 {
        reload_to(&host, &dir, Lib::HttpEcho, n);
    }
    std::thread::sleep(Duration::from_millis(300));
    load.finish().check("Unix socket, 5 reloads");

    // A config without `web`: the container goes, and the socket's file with it.
    dir.write_config(&echo_entry("other", "bystander"));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 200, "{body}");
    host.wait_until("web to be gone", STATE_TIMEOUT, |h| {
        h.find_container("web").is_none().then_some(())
    });
    host.wait_for("the socket file to go", STATE_TIMEOUT, |_| !path.exists());

    // And back.
    dir.write_config(&web_entry(&target, ""));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 200, "{body}");
    host.wait_state("web", "running", STATE_TIMEOUT);
    assert_eq!(get_ok(&target, "/"), MESSAGE);

    let mut host = host;
    assert_eq!(terminate(&mut host), 0, "{}", host.logs());
    // The host removes the file at exit; one a host that died left behind (nothing listens
    // on it) is replaced by the next host.
    assert!(
        !path.exists(),
        "the Unix socket file is left after the host exited"
    );
    drop(std::os::unix::net::UnixListener::bind(&path).expect("a stale socket file"));
    assert!(path.exists());
    let host = Host::start(&dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    assert_eq!(get_ok(&target, "/"), MESSAGE);
    terminate_cleanly(host);
}

// ---------------------------------------------------------------------------------------
// Events.

#[test]
fn an_overlapping_reload_shows_replaced_then_reloaded() {
    let target = Target::free_tcp();
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let host = web_host(&mut dir, &target, "", "");
    let events = host.events(None);
    reload_to(&host, &dir, Lib::HttpEcho, 1);
    let got = events.until("reloaded", STATE_TIMEOUT, |e| e.kind() == "reloaded");
    let kinds: Vec<&str> = got.iter().map(|e| e.kind()).collect();
    let replaced = got
        .iter()
        .position(|e| e.kind() == "replaced")
        .unwrap_or_else(|| panic!("no replaced event before reloaded: {kinds:?}"));
    let data = &got[replaced].data;
    assert_eq!(data["container"], "web", "{data}");
    assert_eq!(
        (
            data["from_generation"].as_u64(),
            data["to_generation"].as_u64()
        ),
        (Some(1), Some(2)),
        "{data}"
    );
    let reloaded = &got.last().expect("until returns the event").data;
    assert_eq!(reloaded["file"], FILE, "{reloaded}");
    assert_eq!(
        (
            reloaded["from_generation"].as_u64(),
            reloaded["to_generation"].as_u64()
        ),
        (Some(1), Some(2)),
        "{reloaded}"
    );
    // The container never left `running`: no state event for web among them.
    assert!(
        !got.iter().any(|e| e.is_state_of("web")),
        "web changed state during the reload: {kinds:?}"
    );
    terminate_cleanly(host);
}

// ---------------------------------------------------------------------------------------
// Config changes.

#[test]
fn a_new_listen_address_in_the_config_moves_the_container_there() {
    let first = Target::free_tcp();
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let host = web_host(&mut dir, &first, "", "");
    let second = Target::free_tcp();
    dir.write_config(&web_entry(&second, ""));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], serde_json::json!(["web"]), "{body}");
    host.wait_for("web to answer on its new address", STATE_TIMEOUT, |_| {
        matches!(get(&second, "/"), Ok((200, _)))
    });
    host.wait_state("web", "running", STATE_TIMEOUT);
    let old = get(&first, "/");
    assert!(
        old.as_ref().is_err_and(|e| e.contains("ConnectionRefused")),
        "the old address is let go: {old:?}"
    );
    terminate_cleanly(host);
}
