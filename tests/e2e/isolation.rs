//! Process isolation: a container with `isolation = "process"` runs each instance in a child
//! process of its own (`balut __isolate`), so a crash, an abort, an `exit()`, a stack
//! overflow or running out of memory in plugin code ends that child only.
//!
//! - The fault matrix in process mode: one table of crashes, one driver, two tests per row
//!   (the victim beside a thread-mode bystander, and beside a process-isolated one too). For
//!   every row the host stays up, the http-echo bystander `web` answers every poll and is
//!   never stopped or reloaded, the victim fails with the exact reason and is restarted in
//!   a new child, and the old children are gone.
//! - A call stuck past its timeout kills the child and pins nothing (`not_unloaded` stays
//!   empty, where a thread stuck in plugin code pins the library: see
//!   `hotplug::removing_a_plugin_stuck_in_stop_does_not_hang_the_host`).
//! - A child killed from outside is restarted; a host killed with SIGKILL leaves no child
//!   behind; a hot reload starts a new child; the API, `/metrics` and `balut status` show the
//!   child's pid, memory and CPU time; thread mode is unchanged.
//!
//! Children are identified through `/proc`: their parent is the host and their command line
//! contains `__isolate`. `cargo test -p balut-tests --test e2e isolation` runs them all.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, Put, STATE_TIMEOUT, Signal, has_field, run_balut, sha12,
    versioned_bytes,
};
use serde_json::Value;

use crate::control::{CLI_TIMEOUT, detail};
use crate::faults::{Watch, try_request};
use crate::hotplug::{first_stop_of, generation, wait_running_on};
use crate::supervise::{chaos, last_error, restarts};
use crate::{echo_entry, terminate_cleanly};

/// What the command line of an isolated child contains.
const ISOLATE: &str = "__isolate";

// ---------------------------------------------------------------------------------------
// Processes, as /proc shows them.

/// One process as `/proc/<pid>` shows it.
#[derive(Debug, Clone)]
struct Proc {
    /// The state letter of `/proc/<pid>/stat` (`Z` for a zombie).
    state: char,
    ppid: u32,
    /// The arguments, joined with spaces.
    cmdline: String,
}

impl Proc {
    /// `None` if there is no such process.
    fn read(pid: u32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')')? + 1..];
        let mut fields = after.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        Some(Proc {
            state,
            ppid,
            cmdline,
        })
    }

    /// A live (not zombie) isolated child.
    fn is_live_isolate(&self) -> bool {
        self.state != 'Z' && self.cmdline.contains(ISOLATE)
    }
}

/// Every process id in `/proc`.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The live isolated children of `parent` (parent pid, `__isolate` in the command line).
fn isolated_children(parent: u32) -> BTreeSet<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| Proc::read(pid).is_some_and(|p| p.ppid == parent && p.is_live_isolate()))
        .collect()
}

/// Zombie children of `parent`: children that ended and were never reaped.
fn zombie_children(parent: u32) -> BTreeSet<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| Proc::read(pid).is_some_and(|p| p.ppid == parent && p.state == 'Z'))
        .collect()
}

/// Whether isolated child `pid` of host `host_pid` is gone: no such process, or another
/// program has the pid now, or a zombie the host is no longer the parent of (after the
/// host died; unreaped children of a live host are not gone).
fn gone(pid: u32, host_pid: u32) -> bool {
    match Proc::read(pid) {
        None => true,
        Some(p) if p.state == 'Z' => p.ppid != host_pid,
        Some(p) => !p.cmdline.contains(ISOLATE),
    }
}

/// Waits until every one of `pids` is gone (see [`gone`]).
fn wait_gone(host: &Host, pids: &BTreeSet<u32>, host_pid: u32) {
    host.wait_for(
        &format!("the isolated children {pids:?} to be gone"),
        STATE_TIMEOUT,
        |_| pids.iter().all(|&pid| gone(pid, host_pid)),
    );
}

/// A pid that [`gone`] holds for by now: panics with what `/proc` says otherwise.
fn assert_gone(pid: u32, host_pid: u32, what: &str) {
    assert!(
        gone(pid, host_pid),
        "{what}: process {pid} is still there: {:?}",
        Proc::read(pid)
    );
}

/// Whether `pid` is a live isolated child of `host_pid`.
fn is_child_of(pid: u32, host_pid: u32) -> bool {
    Proc::read(pid).is_some_and(|p| p.ppid == host_pid && p.is_live_isolate())
}

/// Sends `signal` to process `pid`.
fn kill(pid: u32, signal: Signal) {
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    nix::sys::signal::kill(target, signal).unwrap_or_else(|e| panic!("kill({pid}, {signal}): {e}"));
}

// ---------------------------------------------------------------------------------------
// Containers.

/// The pid of a container's isolated child (`process.pid`), if it has a live one.
fn pid_of(c: &Value) -> Option<u32> {
    c["process"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// `[containers.NAME]`: chaos in process isolation with `config` and the extra key lines
/// `keys` (restarted on failure, the default, unless `keys` say otherwise).
fn isolated(name: &str, config: &str, keys: &str) -> String {
    chaos(name, config, &format!("isolation = \"process\"\n{keys}\n"))
}

/// Waits until container `name` runs in a live isolated child that satisfies `pred`;
/// returns the container and the child's pid.
fn wait_isolated_running(
    host: &Host,
    name: &str,
    what: &str,
    pred: impl Fn(&Value, u32) -> bool,
) -> (Value, u32) {
    host.wait_until(
        &format!("{name} to run in a child process ({what})"),
        STATE_TIMEOUT,
        |h| {
            let c = h.find_container(name)?;
            let pid = pid_of(&c)?;
            (c["state"] == "running" && pred(&c, pid)).then_some((c, pid))
        },
    )
}

/// The reasons of the transitions of `c` (a one-container view) to `failed`.
fn failure_reasons(c: &Value) -> Vec<String> {
    c["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["to"] == "failed")
        .filter_map(|t| t["reason"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until container `name` failed for a reason containing `says`, seen in its
/// `last_error` or the reason of a transition to `failed` in its history (a running
/// container has no `last_error`, and the first retry is at once); returns that reason.
fn wait_failed_for(host: &Host, name: &str, says: &str) -> String {
    host.wait_until(
        &format!("{name} to have failed with {says:?}"),
        STATE_TIMEOUT,
        |h| {
            let c = detail(h, name);
            let error = last_error(&c);
            if error.contains(says) {
                return Some(error.to_owned());
            }
            failure_reasons(&c).into_iter().find(|r| r.contains(says))
        },
    )
}

/// `container failed` lines about `name` since `mark` whose error contains `says`.
fn failed_lines(host: &Host, mark: usize, name: &str, says: &str) -> Vec<String> {
    host.lines_since(mark)
        .into_iter()
        .filter(|l| l.contains("container failed") && has_field(l, "container", name))
        .filter(|l| l.contains(says))
        .collect()
}

/// Whether `/v1/plugins` lists no library it could not unload.
fn nothing_pinned(host: &Host) -> bool {
    host.get_json("/v1/plugins")["not_unloaded"]
        .as_array()
        .is_none_or(Vec::is_empty)
}

/// Asserts `nothing_pinned` for a while (a pin would come once the stuck call is given up).
fn assert_nothing_pinned(host: &Host) {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            nothing_pinned(host),
            "a library is pinned in process mode: {}",
            host.get_json("/v1/plugins")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A host on a folder with `libs` and `config`.
fn host_with(libs: &[Lib], config: &str) -> (PluginDir, Host) {
    let mut dir = PluginDir::with(libs);
    dir.write_config(config);
    let host = Host::start(&dir);
    (dir, host)
}

/// SIGTERM, an exit (with code 0 if `clean`, else any code but no signal), and no isolated
/// child left of the ones in `pids`.
fn terminate_leaving_none(mut host: Host, pids: &BTreeSet<u32>, clean: bool) {
    let host_pid = host.pid();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    if clean {
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM\n{}",
            host.logs()
        );
    } else {
        assert!(
            status.code().is_some(),
            "the host died of a signal at shutdown: {status}\n{}",
            host.logs()
        );
    }
    wait_gone(&host, pids, host_pid);
}

// ---------------------------------------------------------------------------------------
// The fault matrix in process mode.

/// One row: a crash of the chaos plugin in an isolated container.
#[derive(Debug)]
struct Row {
    name: &'static str,
    /// The chaos config (inline table body).
    config: &'static str,
    /// Extra key lines of the victim's entry.
    keys: &'static str,
    /// Where the crash happens.
    call: Call,
    /// What the victim's failure reason must contain.
    says: &'static str,
}

/// Where the crash happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// In every `start`: the victim never runs, and keeps being restarted.
    Start,
    /// In the first health check: the victim runs a while, then crashes, every time.
    Health,
}

/// The other container besides `web` (thread mode, always there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bystander {
    /// Only `web`.
    Thread,
    /// `web` and `calm`, an isolated chaos container without faults.
    Process,
}

/// Start faults: retried 100 ms after the immediate first retry, doubling. (Their chaos
/// config delays `start` by 300 ms first, so each attempt's child can be seen.)
const START_KEYS: &str = "backoff = { initial_ms = 100 }";
/// Health faults: a check a second after the start, restarts 100 ms later.
const HEALTH_KEYS: &str =
    "liveness = { period_ms = 1000, grace_ms = 0 }\nbackoff = { initial_ms = 100 }";

/// Declares the table and, per row, a module with one test per bystander.
macro_rules! isolation_matrix {
    ($($name:ident: $call:ident, $config:expr, $keys:expr => $says:expr;)+) => {
        /// The matrix, in order.
        const ROWS: &[Row] = &[
            $(Row {
                name: stringify!($name),
                config: $config,
                keys: $keys,
                call: Call::$call,
                says: $says,
            }),+
        ];

        $(
            mod $name {
                #[test]
                fn beside_a_thread_bystander() {
                    super::run(stringify!($name), super::Bystander::Thread);
                }

                #[test]
                fn beside_an_isolated_bystander() {
                    super::run(stringify!($name), super::Bystander::Process);
                }
            }
        )+
    };
}

isolation_matrix! {
    segfault_in_start: Start, "segfault_in = \"start\", start_delay_ms = 300", START_KEYS
        => "killed by signal SIGSEGV";
    abort_in_start: Start, "abort_in = \"start\", start_delay_ms = 300", START_KEYS
        => "aborted (SIGABRT)";
    exit_in_start: Start, "exit_in = \"start\", exit_code = 3, start_delay_ms = 300", START_KEYS
        => "exited with code 3";
    stack_overflow_in_start:
        Start, "stack_overflow_in = \"start\", start_delay_ms = 300", START_KEYS
        => "stack overflow";
    // 1 GiB under a 256 MiB address-space limit.
    out_of_memory_in_start: Start,
        "alloc_bytes_in = \"start\", alloc_bytes = 1073741824, start_delay_ms = 300",
        "memory_max_bytes = 268435456\nbackoff = { initial_ms = 100 }"
        => "out of memory";
    segfault_in_health: Health, "segfault_in = \"health\"", HEALTH_KEYS
        => "killed by signal SIGSEGV";
    exit_in_health: Health, "exit_in = \"health\", exit_code = 3", HEALTH_KEYS
        => "exited with code 3";
}

#[test]
fn the_matrix_covers_every_crash_and_its_names_are_unique() {
    let mut names: Vec<&str> = ROWS.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ROWS.len(), "duplicate row names");
    for knob in [
        "segfault_in",
        "abort_in",
        "exit_in",
        "stack_overflow_in",
        "alloc_bytes_in",
    ] {
        assert!(
            ROWS.iter()
                .any(|r| r.call == Call::Start && r.config.contains(knob)),
            "no row with {knob} in start"
        );
    }
    assert!(ROWS.iter().any(|r| r.call == Call::Health));
}

/// Runs the row named `name` beside `bystander`.
fn run(name: &str, bystander: Bystander) {
    let row = ROWS
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name}"));
    let mut world = World::start(row, bystander);
    let victim_pids = match row.call {
        Call::Start => world.check_start_fault(row),
        Call::Health => world.check_health_fault(row),
    };
    world.assert_unshaken(row);
    world.finish(&victim_pids);
}

/// A host with the bystanders, watched, and the victim's file just arrived.
struct World {
    host: Host,
    web_generation: u64,
    echo: SocketAddr,
    watch: Option<Watch>,
    /// `calm`'s generation and child pid, when it is there.
    calm: Option<(u64, u32)>,
    /// Log lines before this came before the victim's file.
    mark: usize,
    _dir: PluginDir,
}

impl World {
    fn start(row: &Row, bystander: Bystander) -> World {
        let mut config = format!(
            "[host]\nsettle_ms = 200\n\n{}{}",
            echo_entry("web", "bystander"),
            isolated("victim", row.config, row.keys)
        );
        if bystander == Bystander::Process {
            config.push_str(&isolated("calm", "", ""));
        }
        let mut dir = PluginDir::with(&[Lib::HttpEcho]);
        dir.write_config(&config);
        let host = Host::start(&dir);
        let web = host.wait_state("web", "running", STATE_TIMEOUT);
        let echo = host.echo_addr("web");
        let (status, body) = request(echo).unwrap_or_else(|e| panic!("web: {e}"));
        assert_eq!(status, 200, "web before the fault: {body}");
        let watch = Watch::start(echo);
        let mark = host.mark();
        // The chaos file arrives under watch: every crash happens while `web` is polled.
        dir.put("libchaos.so", &versioned_bytes(Lib::Chaos, 0), Put::Rename);
        let calm = (bystander == Bystander::Process).then(|| {
            let (c, pid) = wait_isolated_running(&host, "calm", "first start", |_, _| true);
            assert!(is_child_of(pid, host.pid()), "{c}: {:?}", Proc::read(pid));
            (generation(&c), pid)
        });
        World {
            web_generation: generation(&web),
            echo,
            watch: Some(watch),
            calm,
            mark,
            host,
            _dir: dir,
        }
    }

    /// A crash in every `start`: the victim fails with the reason, again and again, each
    /// attempt in a child of its own. Returns the children seen.
    fn check_start_fault(&self, row: &Row) -> BTreeSet<u32> {
        let host = &self.host;
        let mut seen = BTreeSet::new();
        host.wait_for(
            &format!(
                "victim to be restarted twice, each attempt in a new child ({})",
                row.says
            ),
            STATE_TIMEOUT,
            |h| {
                let c = h.container("victim");
                seen.extend(pid_of(&c));
                restarts(&c) >= 2 && seen.len() >= 2
            },
        );
        let reason = wait_failed_for(host, "victim", row.says);
        assert!(
            !reason.contains("chaos: panic"),
            "a crash is no panic: {reason}"
        );
        host.wait_for(
            &format!(
                "two `container failed` lines for victim with {:?}",
                row.says
            ),
            STATE_TIMEOUT,
            |h| failed_lines(h, self.mark, "victim", row.says).len() >= 2,
        );
        let victim = host.container("victim");
        assert!(
            victim["state"] != "running",
            "victim runs despite crashing in start: {victim}"
        );
        // Every child but the one of the attempt under way (if any) ended and was reaped.
        let ended: BTreeSet<u32> = seen
            .iter()
            .copied()
            .filter(|&pid| Some(pid) != pid_of(&victim))
            .collect();
        wait_gone(host, &ended, host.pid());
        seen
    }

    /// A crash in the first health check: the victim runs in a child, fails with the
    /// reason, and runs again in a new child. Returns the children seen.
    fn check_health_fault(&self, row: &Row) -> BTreeSet<u32> {
        let host = &self.host;
        let host_pid = host.pid();
        let (first, first_pid) =
            wait_isolated_running(host, "victim", "first start", |c, _| restarts(c) == 0);
        assert!(is_child_of(first_pid, host_pid), "{first}");
        let reason = wait_failed_for(host, "victim", row.says);
        assert!(
            !reason.contains("chaos: panic"),
            "a crash is no panic: {reason}"
        );
        let (again, again_pid) =
            wait_isolated_running(host, "victim", "after its crash", |c, pid| {
                restarts(c) >= 1 && pid != first_pid
            });
        assert!(is_child_of(again_pid, host_pid), "{again}");
        assert_eq!(
            generation(&again),
            generation(&first),
            "a restart is no reload"
        );
        wait_gone(host, &BTreeSet::from([first_pid]), host_pid);
        host.wait_for(
            &format!("a `container failed` line for victim with {:?}", row.says),
            STATE_TIMEOUT,
            |h| !failed_lines(h, self.mark, "victim", row.says).is_empty(),
        );
        BTreeSet::from([first_pid, again_pid])
    }

    /// The host is up, `web` (and `calm`) were not disturbed, no zombie is left.
    fn assert_unshaken(&mut self, row: &Row) {
        let host = &mut self.host;
        assert!(
            host.is_running(),
            "{}: the host died\n{}",
            row.name,
            host.logs()
        );
        let (status, body) = host.get("/healthz");
        assert_eq!((status, &body["status"]), (200, &"ok".into()), "{body}");
        let web = host.container("web");
        assert_eq!(web["state"], "running", "{web}");
        assert!(web["last_error"].is_null(), "{web}");
        assert_eq!(web["isolation"], "thread", "{web}");
        assert!(web["process"].is_null(), "{web}");
        assert_eq!(
            generation(&web),
            self.web_generation,
            "web was reloaded: {web}"
        );
        let lines = host.lines_since(self.mark);
        assert_eq!(first_stop_of(&lines, "web"), None, "web was stopped");
        if let Some((calm_generation, calm_pid)) = self.calm {
            let calm = host.container("calm");
            assert_eq!(calm["state"], "running", "{calm}");
            assert_eq!(restarts(&calm), 0, "{calm}");
            assert!(calm["last_error"].is_null(), "{calm}");
            assert_eq!(
                generation(&calm),
                calm_generation,
                "calm was reloaded: {calm}"
            );
            assert_eq!(
                pid_of(&calm),
                Some(calm_pid),
                "calm has a new child: {calm}"
            );
            assert!(
                is_child_of(calm_pid, host.pid()),
                "calm's child {calm_pid}: {:?}",
                Proc::read(calm_pid)
            );
            assert_eq!(first_stop_of(&lines, "calm"), None, "calm was stopped");
        }
        let watch = self.watch.take().expect("the watch runs until now");
        let (answered, failures) = watch.finish();
        assert!(
            failures.is_empty(),
            "web failed {} of its polls during the crashes: {failures:?}",
            failures.len()
        );
        assert!(answered > 0, "web was never polled");
        let (status, body) = request(self.echo).unwrap_or_else(|e| panic!("web: {e}"));
        assert_eq!(status, 200, "web after the crashes: {body}");
        assert!(body.contains("bystander"), "{body:?}");
        let host_pid = host.pid();
        host.wait_for("no zombie child of the host", STATE_TIMEOUT, |_| {
            zombie_children(host_pid).is_empty()
        });
    }

    /// SIGTERM: the host exits cleanly and leaves none of the victim's children (nor any
    /// other isolated child) behind.
    fn finish(self, victim_pids: &BTreeSet<u32>) {
        let mut pids = victim_pids.clone();
        pids.extend(isolated_children(self.host.pid()));
        terminate_leaving_none(self.host, &pids, false);
    }
}

/// One `GET /` on a fresh connection: the status and the body.
fn request(addr: SocketAddr) -> Result<(u16, String), String> {
    try_request(addr, "GET", "/", &[], b"")
}

// ---------------------------------------------------------------------------------------
// Stuck calls.

#[test]
fn a_stop_stuck_in_a_child_is_killed_on_restart_and_pins_nothing() {
    let (_dir, host) = host_with(
        &[Lib::Chaos],
        &isolated("victim", "hang_in = \"stop\"", "stop_timeout_ms = 500"),
    );
    let host_pid = host.pid();
    let (_, old) = wait_isolated_running(&host, "victim", "first start", |_, _| true);

    let started = Instant::now();
    let addr = host.addr().to_string();
    let out = run_balut(["ctl", "restart", "victim", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "victim: running", "{out:?}");
    // 500 ms for the stop, then SIGTERM and at most 1 s until SIGKILL, then a new start.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the restart took {:?}",
        started.elapsed()
    );
    let (victim, new) =
        wait_isolated_running(&host, "victim", "in a new child", |_, pid| pid != old);
    assert!(is_child_of(new, host_pid), "{victim}");
    wait_gone(&host, &BTreeSet::from([old]), host_pid);
    assert!(
        failure_reasons(&detail(&host, "victim"))
            .iter()
            .chain(host.lines_with(&["victim"]).iter())
            .any(|r| r.contains("stop")),
        "nothing says the stop got stuck: {}\n{}",
        detail(&host, "victim"),
        host.logs()
    );
    assert_nothing_pinned(&host);
    assert_eq!(host.plugin("libchaos.so")["status"], "loaded");
    // The new child's stop hangs too: SIGTERM still ends the host within its budget.
    terminate_leaving_none(host, &BTreeSet::from([old, new]), false);
}

#[test]
fn a_start_stuck_in_a_child_fails_the_container_and_kills_the_child() {
    let (_dir, host) = host_with(
        &[Lib::Chaos],
        &isolated(
            "victim",
            "hang_in = \"start\"",
            "restart = \"never\"\nstart_timeout_ms = 500",
        ),
    );
    let host_pid = host.pid();
    // The child is there while `start` hangs.
    let stuck = host.wait_until("victim's child while start hangs", STATE_TIMEOUT, |h| {
        let c = h.find_container("victim")?;
        (c["state"] == "starting").then(|| pid_of(&c))?
    });
    let victim = host.wait_state("victim", "failed", STATE_TIMEOUT);
    assert!(last_error(&victim).contains("start"), "{victim}");
    // The status shows the child until the clean-up after the failure has ended it.
    host.wait_until("victim's child gone from its status", STATE_TIMEOUT, |h| {
        h.find_container("victim")
            .filter(|c| c["state"] == "failed" && c["process"].is_null())
    });
    wait_gone(&host, &BTreeSet::from([stuck]), host_pid);
    assert!(
        isolated_children(host_pid).is_empty(),
        "{:?}",
        isolated_children(host_pid)
    );
    assert_nothing_pinned(&host);
    terminate_leaving_none(host, &BTreeSet::from([stuck]), true);
}

#[test]
fn removing_the_file_of_a_child_stuck_in_stop_unloads_it_completely() {
    let (dir, host) = host_with(
        &[Lib::Chaos],
        &isolated("victim", "hang_in = \"stop\"", "stop_timeout_ms = 500"),
    );
    let host_pid = host.pid();
    let (_, old) = wait_isolated_running(&host, "victim", "first start", |_, _| true);
    dir.remove("libchaos.so");
    let victim = host.wait_until("victim to settle after its file went", STATE_TIMEOUT, |h| {
        h.find_container("victim")
            .filter(|c| c["state"] != "running" && c["state"] != "stopping")
    });
    assert!(last_error(&victim).contains("libchaos.so"), "{victim}");
    assert!(victim["process"].is_null(), "{victim}");
    wait_gone(&host, &BTreeSet::from([old]), host_pid);
    host.wait_plugin_gone("libchaos.so", STATE_TIMEOUT);
    assert_nothing_pinned(&host);
    terminate_leaving_none(host, &BTreeSet::from([old]), true);
}

// ---------------------------------------------------------------------------------------
// Killed children, a killed host, reloads.

#[test]
fn a_child_killed_from_outside_is_restarted_in_a_new_one() {
    let (_dir, host) = host_with(&[Lib::Chaos], &isolated("victim", "", ""));
    let host_pid = host.pid();
    let (first, old) = wait_isolated_running(&host, "victim", "first start", |_, _| true);
    assert_eq!(restarts(&first), 0, "{first}");
    assert!(is_child_of(old, host_pid), "{first}");

    kill(old, Signal::SIGKILL);
    let reason = wait_failed_for(&host, "victim", "killed by signal SIGKILL");
    assert!(!reason.is_empty());
    let (again, new) = wait_isolated_running(&host, "victim", "after the kill", |c, pid| {
        restarts(c) >= 1 && pid != old
    });
    assert!(is_child_of(new, host_pid), "{again}");
    assert_eq!(generation(&again), generation(&first), "{again}");
    wait_gone(&host, &BTreeSet::from([old]), host_pid);
    host.wait_for("no zombie child of the host", STATE_TIMEOUT, |_| {
        zombie_children(host_pid).is_empty()
    });
    terminate_leaving_none(host, &BTreeSet::from([old, new]), true);
}

/// A host whose binary was deleted (or replaced by an upgrade) since it started still
/// starts children: they run the host's own image, never the file now at its path. Before
/// the fix the restart failed with "cannot start its process: No such file or directory".
#[test]
fn a_child_starts_again_after_the_hosts_binary_was_deleted() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&isolated("victim", "", ""));
    let binary = dir.tmp().join("balut-copy");
    std::fs::copy(&balut_tests::build().balut, &binary).expect("copying the balut binary");
    let host = Host::start_from(&binary, &dir);
    let (_, old) = wait_isolated_running(&host, "victim", "first start", |_, _| true);
    std::fs::remove_file(&binary).expect("deleting the copy");

    kill(old, Signal::SIGKILL);
    wait_failed_for(&host, "victim", "killed by signal SIGKILL");
    let (again, new) =
        wait_isolated_running(&host, "victim", "after the binary was deleted", |c, pid| {
            restarts(c) >= 1 && pid != old
        });
    assert_eq!(last_error(&again), "", "{again}");
    terminate_leaving_none(host, &BTreeSet::from([old, new]), true);
}

#[test]
fn a_host_killed_with_sigkill_leaves_no_child_behind() {
    let (dir, mut host) = host_with(
        &[Lib::Chaos],
        &format!(
            "{}{}",
            isolated("one", "", ""),
            // Its stop would hang: only the death of its parent may end it.
            isolated("two", "hang_in = \"stop\"", "")
        ),
    );
    let host_pid = host.pid();
    let (_, one) = wait_isolated_running(&host, "one", "started", |_, _| true);
    let (_, two) = wait_isolated_running(&host, "two", "started", |_, _| true);
    let children = isolated_children(host_pid);
    assert_eq!(
        children,
        BTreeSet::from([one, two]),
        "the host's isolated children are the two containers'"
    );

    host.signal(Signal::SIGKILL);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert!(status.code().is_none(), "SIGKILL ended the host: {status}");
    host.wait_for(
        &format!("the children {children:?} of the killed host to end"),
        Duration::from_secs(10),
        |_| children.iter().all(|&pid| gone(pid, host_pid)),
    );
    for pid in &children {
        assert_gone(*pid, host_pid, "after the host was killed");
    }
    // Nor any other isolated process of this host (its TMPDIR is this test's).
    let tmpdir = format!("TMPDIR={}", dir.tmp().display());
    let strays: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| Proc::read(pid).is_some_and(|p| p.is_live_isolate()))
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == tmpdir.as_bytes()))
        })
        .collect();
    assert!(strays.is_empty(), "isolated processes left: {strays:?}");
}

#[test]
fn a_hot_reload_starts_a_new_child_and_ends_the_old_one() {
    let mut dir = PluginDir::new();
    dir.write_config(&format!(
        "[host]\nsettle_ms = 200\n\n{}",
        isolated("victim", "", "")
    ));
    let v0 = versioned_bytes(Lib::Chaos, 0);
    dir.put("libchaos.so", &v0, Put::Rename);
    let host = Host::start(&dir);
    let host_pid = host.pid();
    let first = wait_running_on(&host, "victim", &sha12(&v0));
    let old = pid_of(&first).unwrap_or_else(|| panic!("no child: {first}"));
    assert!(is_child_of(old, host_pid), "{first}");

    let v1 = versioned_bytes(Lib::Chaos, 1);
    dir.put("libchaos.so", &v1, Put::Rename);
    let reloaded = wait_running_on(&host, "victim", &sha12(&v1));
    let (reloaded, new) = wait_isolated_running(&host, "victim", "on the new content", |c, _| {
        c["sha256"] == reloaded["sha256"]
    });
    assert!(
        generation(&reloaded) > generation(&first),
        "{first} -> {reloaded}"
    );
    assert_ne!(new, old, "the reload kept the old child: {reloaded}");
    assert!(is_child_of(new, host_pid), "{reloaded}");
    wait_gone(&host, &BTreeSet::from([old]), host_pid);
    assert_eq!(
        isolated_children(host_pid),
        BTreeSet::from([new]),
        "one child after the reload"
    );
    assert_nothing_pinned(&host);
    terminate_leaving_none(host, &BTreeSet::from([old, new]), true);
}

/// An isolated child must not die with the host thread that spawned it (`PR_SET_PDEATHSIG`
/// fires when that thread ends, and idle runtime threads end after about 10 s).
#[test]
fn an_idle_isolated_container_keeps_its_child() {
    let (_dir, host) = host_with(&[Lib::Chaos], &isolated("calm", "", ""));
    let (_, pid) = wait_isolated_running(&host, "calm", "started", |_, _| true);
    std::thread::sleep(Duration::from_secs(15));
    let calm = host.container("calm");
    assert_eq!(calm["state"], "running", "{calm}");
    assert_eq!(restarts(&calm), 0, "{calm}");
    assert_eq!(pid_of(&calm), Some(pid), "{calm}");
    assert!(is_child_of(pid, host.pid()), "{:?}", Proc::read(pid));
    terminate_leaving_none(host, &BTreeSet::from([pid]), true);
}

// ---------------------------------------------------------------------------------------
// What the host shows.

/// What the victim of the figures test allocates (and keeps), and its memory limit.
const KEPT_BYTES: u64 = 64 << 20;
const LIMIT_BYTES: u64 = 512 << 20;

/// `/metrics`, and the value of sample `name` with `container="{container}"` in it, if any.
fn container_sample(host: &Host, name: &str, container: &str) -> (Option<f64>, String) {
    let (status, _, text) = host.get_text("/metrics");
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok::<_, std::io::Error>(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("unparsable metrics ({e}):\n{text}"));
    let value = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("container") == Some(container))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        });
    (value, text)
}

#[test]
fn the_api_metrics_and_status_show_the_childs_pid_memory_and_cpu() {
    // The victim keeps 64 MiB: the figures are its process's, not the host's.
    let (_dir, host) = host_with(
        &[Lib::Chaos],
        &isolated(
            "victim",
            &format!("alloc_bytes_in = \"start\", alloc_bytes = {KEPT_BYTES}"),
            &format!("memory_max_bytes = {LIMIT_BYTES}"),
        ),
    );
    let host_pid = host.pid();
    let (listed, pid) = wait_isolated_running(&host, "victim", "started", |_, _| true);
    assert_eq!(listed["isolation"], "process", "{listed}");
    let one = detail(&host, "victim");
    assert_eq!(one["isolation"], "process", "{one}");
    assert_eq!(pid_of(&one), Some(pid), "{one}");
    let process = &one["process"];
    assert!(
        process["rss_bytes"]
            .as_u64()
            .is_some_and(|rss| rss >= KEPT_BYTES),
        "{one}"
    );
    assert!(
        process["cpu_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{one}"
    );

    let proc = Proc::read(pid).unwrap_or_else(|| panic!("no process {pid}"));
    assert!(proc.cmdline.contains(ISOLATE), "{proc:?}");
    assert_eq!(proc.ppid, host_pid, "{proc:?}");
    assert_ne!(proc.state, 'Z', "{proc:?}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let address_space = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap_or_else(|| panic!("no address space limit in:\n{limits}"));
    assert_eq!(
        address_space.split_whitespace().nth(3),
        Some(LIMIT_BYTES.to_string().as_str()),
        "memory_max_bytes is the child's soft RLIMIT_AS: {address_space}"
    );

    let (resident, text) = container_sample(&host, "balut_container_resident_bytes", "victim");
    assert!(
        resident.is_some_and(|r| r >= KEPT_BYTES as f64),
        "no balut_container_resident_bytes{{container=\"victim\"}} >= {KEPT_BYTES}:\n{text}"
    );
    let (cpu, text) = container_sample(&host, "balut_container_cpu_seconds", "victim");
    assert!(
        cpu.is_some_and(|s| s >= 0.0),
        "no balut_container_cpu_seconds{{container=\"victim\"}}:\n{text}"
    );

    let addr = host.addr().to_string();
    let out = run_balut(["status", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let row = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("victim"))
        .unwrap_or_else(|| panic!("no row for victim: {:?}", out.stdout));
    assert!(
        row.split_whitespace().any(|cell| cell == pid.to_string()),
        "the row does not show the pid {pid}: {row:?}"
    );

    // Stopped: no process, no figures.
    let (status, body) = host.post("/v1/containers/victim/stop");
    assert_eq!(status, 200, "{body}");
    assert!(body["process"].is_null(), "{body}");
    wait_gone(&host, &BTreeSet::from([pid]), host_pid);
    let (resident, text) = container_sample(&host, "balut_container_resident_bytes", "victim");
    assert_eq!(resident, None, "figures of a stopped container:\n{text}");
    terminate_leaving_none(host, &BTreeSet::from([pid]), true);
}

#[test]
fn a_config_reload_moves_a_container_between_threads_and_a_child() {
    let plain = chaos("mover", "", "");
    let (mut dir, host) = host_with(&[Lib::Chaos], &plain);
    let host_pid = host.pid();
    let reload = |dir: &mut PluginDir, config: &str| {
        dir.write_config(config);
        let (status, report) = host.post("/v1/reload");
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["changed"], serde_json::json!(["mover"]), "{report}");
    };
    let threaded = host.wait_state("mover", "running", STATE_TIMEOUT);
    assert_eq!(threaded["isolation"], "thread", "{threaded}");

    reload(&mut dir, &format!("{plain}isolation = \"process\"\n"));
    let (_, first) = wait_isolated_running(&host, "mover", "after the reload", |_, _| true);
    assert!(is_child_of(first, host_pid), "{:?}", Proc::read(first));

    reload(
        &mut dir,
        &format!("{plain}isolation = \"process\"\nmemory_max_bytes = {LIMIT_BYTES}\n"),
    );
    let (_, limited) =
        wait_isolated_running(&host, "mover", "with a memory limit", |_, pid| pid != first);
    let limits = std::fs::read_to_string(format!("/proc/{limited}/limits")).expect("read limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max address space") && l.contains(&LIMIT_BYTES.to_string())),
        "{limits}"
    );
    wait_gone(&host, &BTreeSet::from([first]), host_pid);

    reload(&mut dir, &plain);
    let back = host.wait_until("mover back in a thread", STATE_TIMEOUT, |h| {
        h.find_container("mover")
            .filter(|c| c["state"] == "running" && c["isolation"] == "thread")
    });
    assert!(back["process"].is_null(), "{back}");
    wait_gone(&host, &BTreeSet::from([limited]), host_pid);
    assert!(isolated_children(host_pid).is_empty());
    terminate_leaving_none(host, &BTreeSet::from([first, limited]), true);
}

#[test]
fn a_thread_left_running_in_a_child_pins_nothing() {
    // In thread mode the same leaves the library mapped: `faults::thread_left_running_after_stop`.
    let (_dir, host) = host_with(&[Lib::Chaos], &isolated("leaky", "leak_thread = true", ""));
    let host_pid = host.pid();
    let (_, pid) = wait_isolated_running(&host, "leaky", "started", |_, _| true);
    let (status, body) = host.post("/v1/containers/leaky/stop");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "stopped", "{body}");
    assert!(body["last_error"].is_null(), "{body}");
    wait_gone(&host, &BTreeSet::from([pid]), host_pid);
    assert_nothing_pinned(&host);
    terminate_leaving_none(host, &BTreeSet::from([pid]), true);
}

#[test]
fn thread_mode_is_the_default_and_unchanged() {
    let (_dir, host) = host_with(
        &[Lib::HttpEcho, Lib::Chaos],
        &format!("{}{}", echo_entry("web", "threads"), chaos("calm", "", "")),
    );
    for name in ["web", "calm"] {
        host.wait_state(name, "running", STATE_TIMEOUT);
        for c in [host.container(name), detail(&host, name)] {
            assert_eq!(c["isolation"], "thread", "{c}");
            assert!(
                c.get("process").is_some_and(Value::is_null),
                "`process` is there and null: {c}"
            );
        }
    }
    assert!(
        isolated_children(host.pid()).is_empty(),
        "thread mode made children: {:?}",
        isolated_children(host.pid())
    );
    terminate_cleanly(host);
}

#[test]
fn the_host_default_isolation_applies_unless_a_container_says_otherwise() {
    let (_dir, host) = host_with(
        &[Lib::Chaos],
        &format!(
            "[host]\nisolation = \"process\"\n\n{}{}",
            chaos("inherits", "", ""),
            chaos("threaded", "", "isolation = \"thread\"\n")
        ),
    );
    let (inherits, pid) = wait_isolated_running(&host, "inherits", "started", |_, _| true);
    assert_eq!(inherits["isolation"], "process", "{inherits}");
    assert!(is_child_of(pid, host.pid()), "{inherits}");
    let threaded = host.wait_state("threaded", "running", STATE_TIMEOUT);
    assert_eq!(threaded["isolation"], "thread", "{threaded}");
    assert!(threaded["process"].is_null(), "{threaded}");
    assert_eq!(
        isolated_children(host.pid()),
        BTreeSet::from([pid]),
        "one child, for `inherits`"
    );
    terminate_leaving_none(host, &BTreeSet::from([pid]), true);
}

#[test]
fn a_memory_limit_needs_process_isolation() {
    let out = crate::config::refused(&chaos("victim", "", "memory_max_bytes = 268435456\n"));
    assert!(out.stderr.contains("memory_max_bytes"), "{}", out.stderr);
    let out = crate::config::refused(&chaos(
        "victim",
        "",
        "isolation = \"thread\"\nmemory_max_bytes = 268435456\n",
    ));
    assert!(out.stderr.contains("memory_max_bytes"), "{}", out.stderr);
}

#[test]
fn an_unknown_isolation_is_refused() {
    let out = crate::config::refused(&chaos("victim", "", "isolation = \"vm\"\n"));
    assert!(out.stderr.contains("isolation"), "{}", out.stderr);
    assert!(out.stderr.contains("vm"), "{}", out.stderr);
    let out = crate::config::refused("[host]\nisolation = \"processes\"\n");
    assert!(out.stderr.contains("isolation"), "{}", out.stderr);
}

#[test]
fn a_container_named_like_a_flag_runs_isolated() {
    // Valid names (`A-Z a-z 0-9 - _ .`) that look like options of the child's command line.
    let names = ["-v", "--help", "--version"];
    let config: String = names
        .iter()
        .map(|name| {
            format!(
                "[containers.\"{name}\"]\nplugin = \"chaos\"\nisolation = \"process\"\n\
                 restart = \"never\"\nconfig = {{}}\n"
            )
        })
        .collect();
    let (_dir, host) = host_with(&[Lib::Chaos], &config);
    let mut pids = BTreeSet::new();
    for name in names {
        let c = host.wait_settled(name, STATE_TIMEOUT);
        assert_eq!(c["state"], "running", "{c}");
        let pid = pid_of(&c).unwrap_or_else(|| panic!("no child: {c}"));
        assert!(is_child_of(pid, host.pid()), "{c}");
        pids.insert(pid);
    }
    terminate_leaving_none(host, &pids, true);
}

/// What systemd does to a unit (SIGTERM to every process of its cgroup) and a terminal's
/// Ctrl-C to a process group: a child obeys SIGTERM and SIGINT from its host only, so the
/// host stops the containers in order, each cleanly.
#[test]
fn sigterm_to_the_children_too_still_stops_them_in_order() {
    let (_dir, mut host) = host_with(
        &[Lib::Chaos],
        &format!(
            "{}{}",
            isolated("base", "", ""),
            isolated("top", "", "requires = [\"base\"]")
        ),
    );
    let host_pid = host.pid();
    let (_, base) = wait_isolated_running(&host, "base", "started", |_, _| true);
    let (_, top) = wait_isolated_running(&host, "top", "started", |_, _| true);
    let children = BTreeSet::from([base, top]);

    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        for &pid in &children {
            kill(pid, signal);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    for (name, pid) in [("base", base), ("top", top)] {
        let c = host.container(name);
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(pid_of(&c), Some(pid), "{name} has a new child: {c}");
        assert_eq!(restarts(&c), 0, "{c}");
    }

    let mark = host.mark();
    for &pid in &children {
        kill(pid, Signal::SIGTERM);
    }
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM\n{}",
        host.logs()
    );
    let lines = host.lines_since(mark);
    let stopped = |name: &str| {
        lines
            .iter()
            .position(|l| l.contains("container stopped") && has_field(l, "container", name))
            .unwrap_or_else(|| panic!("{name} did not stop cleanly:\n{}", lines.join("\n")))
    };
    assert!(
        stopped("top") < stopped("base"),
        "top (which requires base) stops first"
    );
    wait_gone(&host, &children, host_pid);
}
