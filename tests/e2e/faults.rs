//! The fault matrix (issue 6): one table of faults, one driver, one test per row.
//!
//! Every case runs its own host with a healthy bystander, the http-echo container `web`,
//! polled over HTTP for the whole case. After the fault the driver asserts, for every row:
//!
//! 1. the host is up: its process runs and `GET /healthz` answers 200;
//! 2. `web` is untouched: still `running`, same generation, never stopped, and it answered
//!    every poll while the fault happened;
//! 3. the row's expectation: the failure is reported with a clear reason (a `/v1/plugins`
//!    error naming the file, a container's `last_error`, a log line, an HTTP error naming the
//!    request), or the folder's final state for races.
//!
//! Faults in plugins come from the `chaos` plugin (its config knobs); its container is
//! `victim`, and its file arrives after `web` runs, so every fault happens under watch.
//! `cargo test -p balut-tests --test e2e faults` runs the matrix.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, Put, STATE_TIMEOUT, Signal, has_field, lib_bytes, set_mode,
    sha12, versioned_bytes,
};
use serde_json::Value;

use crate::echo_entry;
use crate::hotplug::{
    first_stop_of, generation, refused_lines, wait_loaded, wait_no_copy, wait_running_on,
    wait_single_copy,
};

/// One row of the matrix.
#[derive(Debug)]
struct Case {
    name: &'static str,
    fault: Fault,
    expect: Expect,
}

/// What goes wrong.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A file named so appears in the plugin folder.
    File(&'static str, Content),
    /// The chaos file arrives; its container `victim` has this chaos `config` (inline table
    /// body) and these extra container `keys` (TOML lines); then `then` happens.
    Chaos {
        config: &'static str,
        keys: &'static str,
        then: Then,
    },
    /// The folder changes while `victim` (with this chaos `config`) is in a slow call.
    Race { config: &'static str, race: Racing },
    /// A request to the API.
    Http {
        method: &'static str,
        target: Target,
        body: Body,
    },
    /// The config file gets `line` appended (inside `[containers.web]`), then is reloaded.
    BadConfig { line: &'static str, via: Via },
}

/// What a bad file holds.
#[derive(Debug, Clone, Copy)]
enum Content {
    Empty,
    Text,
    /// The first `n` bytes of the chaos plugin.
    Head(usize),
    /// The first half of the chaos plugin.
    Half,
    /// The chaos plugin without its last `n` bytes.
    AllBut(usize),
    /// The chaos plugin with another machine in its ELF header.
    OtherArch,
    /// A copy of the system's libm: a whole shared library, but no plugin.
    SystemLib,
    /// A built fixture library.
    Fixture(Lib),
    /// A sparse file of this many bytes.
    Sparse(u64),
    /// A fixture library with mode 000.
    Unreadable,
    /// A folder.
    Folder,
    /// A symlink to a second symlink that points back.
    SymlinkLoop(&'static str),
}

/// What the test does once `victim` runs (or failed to).
#[derive(Debug, Clone, Copy)]
enum Then {
    Nothing,
    /// `POST /v1/containers/victim/stop` once it runs.
    Stop,
}

/// Folder races.
#[derive(Debug, Clone, Copy)]
enum Racing {
    /// Version 1 replaces version 0 while version 0's `start` is slow.
    ReplaceDuringSlowStart,
    /// The file is removed while its container's `start` is slow.
    RemoveDuringSlowStart,
    /// Version 1 arrives and its reload hangs in the old `stop`; version 2 arrives then.
    ReplaceDuringSlowStop,
    /// `chain-a.so` is renamed to `chain-b.so`, at once to `chain-c.so`.
    RenameChain,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Path(&'static str),
    /// `{before}{a name of `len` letters}{after}`.
    LongName {
        before: &'static str,
        len: usize,
        after: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Nothing,
    Json(&'static str),
    /// Announced as this many bytes.
    Huge(usize),
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Post,
    Sighup,
}

/// What the row expects besides the host and `web` being fine.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The file is listed as an error of `kind`; its error text contains the file name and
    /// each of `says`; a `plugin file refused` line names the file.
    Refused {
        kind: &'static str,
        says: &'static [&'static str],
    },
    /// `victim` ends `state` with a `last_error` containing each of `says`.
    Victim {
        state: &'static str,
        says: &'static [&'static str],
    },
    /// `victim` runs, and logged a line with each of `says`.
    Runs { says: &'static [&'static str] },
    /// `victim` runs on and its probes show it unhealthy, then healthy again.
    Flaps,
    /// `victim` runs but is not ready: its readiness probes fail with each of `says`, and
    /// a `readiness check failed` line says so.
    NotReady { says: &'static [&'static str] },
    /// `victim` stopped, but its library is listed under `not_unloaded` with a reason
    /// containing each of `says`.
    NotUnloaded { says: &'static [&'static str] },
    /// `victim`'s long log line came through cut, with the marker.
    LogTruncated,
    /// The folder's final state: `victim` runs on version `version` of chaos from `file`
    /// (`None`: the file is gone and `victim` stopped), `/v1/plugins` lists just that, and
    /// a log line tells what happened (each of `says`).
    Converged {
        file: &'static str,
        version: Option<u64>,
        says: &'static [&'static str],
    },
    /// The API answers `status`; a JSON error (or the body, for a 2xx) contains each of
    /// `says`.
    Answer {
        status: u16,
        says: &'static [&'static str],
    },
    /// The reload is refused with an error naming the file, the appended line's number and
    /// `key`; the old config stays in force.
    ConfigRefused { key: &'static str },
}

/// Declares the table and one `#[test]` per row, named after it.
macro_rules! fault_matrix {
    ($($name:ident: $fault:expr => $expect:expr;)+) => {
        /// The matrix, in order.
        const CASES: &[Case] = &[
            $(Case { name: stringify!($name), fault: $fault, expect: $expect }),+
        ];

        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )+
    };
}

use Body::*;
use Content::*;
use Expect::*;
use Fault::*;

fault_matrix! {
    // Bad files.
    empty_file: File("empty.so", Empty)
        => Refused { kind: "not_elf", says: &["not an ELF file", "empty"] };
    not_elf: File("text.so", Text)
        => Refused { kind: "not_elf", says: &["not an ELF file"] };
    truncated_in_elf_header: File("cut-header.so", Head(40))
        => Refused { kind: "truncated", says: &["truncated", "ELF header"] };
    truncated_in_program_headers: File("cut-phdrs.so", Head(64 + 56 + 20))
        => Refused { kind: "truncated", says: &["truncated", "program headers"] };
    truncated_in_the_middle: File("cut-half.so", Half)
        => Refused { kind: "truncated", says: &["truncated"] };
    truncated_just_before_the_end: File("cut-tail.so", AllBut(100))
        => Refused { kind: "truncated", says: &["truncated"] };
    other_architecture: File("aarch64.so", OtherArch)
        => Refused { kind: "wrong_architecture", says: &["wrong architecture", "ELF for"] };
    system_library: File("libsystem_m.so", SystemLib)
        => Refused { kind: "missing_export", says: &["missing export", "not a Balut plugin"] };
    missing_export: File("no-export.so", Fixture(Lib::NoExport))
        => Refused { kind: "missing_export", says: &["missing export", "not a Balut plugin"] };
    wrong_interface: File("wrong-interface.so", Fixture(Lib::WrongInterface))
        => Refused { kind: "interface_mismatch", says: &["`wrong-interface`", "interface 2.0"] };
    huge_sparse_file: File("huge.so", Sparse(8 << 30))
        => Refused {
            kind: "too_large",
            says: &["too large", "8589934592 bytes", "max_plugin_bytes"],
        };
    unreadable_file: File("unreadable.so", Unreadable)
        => Refused { kind: "io", says: &["cannot read", "ermission denied"] };
    folder_named_like_a_plugin: File("x.so", Folder)
        => Refused { kind: "not_a_file", says: &["is a folder"] };
    symlink_loop: File("loop-a.so", SymlinkLoop("loop-b.so"))
        => Refused { kind: "io", says: &["symlink", "Too many levels of symbolic links"] };

    // Misbehaving plugins.
    panic_in_new: Chaos { config: "panic_in = \"new\"", keys: "", then: Then::Nothing }
        => Victim { state: "failed", says: &["constructor", "chaos: panic in new"] };
    panic_in_start: Chaos { config: "panic_in = \"start\"", keys: "", then: Then::Nothing }
        => Victim { state: "failed", says: &["start", "chaos: panic in start"] };
    panic_in_stop: Chaos { config: "panic_in = \"stop\"", keys: "", then: Then::Stop }
        => Victim { state: "failed", says: &["stop", "chaos: panic in stop"] };
    panic_in_health: Chaos {
        config: "panic_in = \"health\"",
        keys: "liveness = { period_ms = 100 }",
        then: Then::Nothing,
    } => Victim { state: "failed", says: &["health check", "chaos: panic in health"] };
    panic_in_ready: Chaos {
        config: "panic_in = \"ready\"",
        keys: "readiness = { period_ms = 100 }",
        then: Then::Nothing,
    } => Victim { state: "failed", says: &["readiness check", "chaos: panic in ready"] };
    panic_in_drop: Chaos { config: "panic_in = \"drop\"", keys: "", then: Then::Stop }
        => Victim { state: "failed", says: &["drop", "chaos: panic in drop"] };
    hang_in_new: Chaos {
        config: "hang_in = \"new\", hang_ms = 1500",
        keys: "start_timeout_ms = 300",
        then: Then::Nothing,
    } => Victim { state: "failed", says: &["constructor", "stuck", "within 300ms"] };
    hang_in_start: Chaos {
        config: "hang_in = \"start\", hang_ms = 1500",
        keys: "start_timeout_ms = 300",
        then: Then::Nothing,
    } => Victim { state: "failed", says: &["stuck in start", "within 300ms"] };
    hang_in_stop: Chaos {
        config: "hang_in = \"stop\", hang_ms = 1500",
        keys: "stop_timeout_ms = 300",
        then: Then::Stop,
    } => Victim { state: "failed", says: &["stuck in stop", "no return from stop within"] };
    hang_in_health: Chaos {
        config: "hang_in = \"health\", hang_ms = 1000",
        keys: "liveness = { period_ms = 100, timeout_ms = 200, grace_ms = 0, \
               failure_threshold = 1 }",
        then: Then::Nothing,
    } => Victim { state: "failed", says: &["liveness probe failed", "timed out", "health"] };
    hang_in_ready: Chaos {
        config: "hang_in = \"ready\", hang_ms = 1000",
        keys: "readiness = { period_ms = 100, timeout_ms = 200 }",
        then: Then::Nothing,
    } => NotReady { says: &["timed out"] };
    hang_in_drop: Chaos {
        config: "hang_in = \"drop\", hang_ms = 1500",
        keys: "stop_timeout_ms = 300",
        then: Then::Stop,
    } => Victim { state: "failed", says: &["drop stuck", "no return from drop within"] };
    health_flapping: Chaos {
        config: "flap_health_every = 2",
        keys: "liveness = { period_ms = 50, grace_ms = 0, failure_threshold = 3 }",
        then: Then::Nothing,
    } => Flaps;
    failure_reported_in_a_loop: Chaos {
        config: "report_failure_every_ms = 100",
        keys: "restart = \"on-failure\"\n\
               backoff = { initial_ms = 50, max_restarts = 2, window_ms = 60000 }",
        then: Then::Nothing,
    } => Victim { state: "quarantined", says: &["reported failure", "chaos: failure 1 reported"] };
    slow_start_within_the_timeout: Chaos {
        config: "start_delay_ms = 1000",
        keys: "start_timeout_ms = 20000",
        then: Then::Nothing,
    } => Runs { says: &["delaying start", "ms=1000"] };
    slow_start_beyond_the_timeout: Chaos {
        config: "start_delay_ms = 2000",
        keys: "start_timeout_ms = 300",
        then: Then::Nothing,
    } => Victim { state: "failed", says: &["stuck in start", "within 300ms"] };
    thread_left_running_after_stop:
        Chaos { config: "leak_thread = true", keys: "", then: Then::Stop }
        => NotUnloaded { says: &["still mapped"] };
    megabyte_log_line: Chaos { config: "log_line_bytes = 1000000", keys: "", then: Then::Nothing }
        => LogTruncated;

    // Folder races.
    replace_during_a_slow_start:
        Race { config: "start_delay_ms = 800", race: Racing::ReplaceDuringSlowStart }
        => Converged { file: "libchaos.so", version: Some(1), says: &["plugin reloaded"] };
    remove_during_a_slow_start:
        Race { config: "start_delay_ms = 800", race: Racing::RemoveDuringSlowStart }
        => Converged { file: "libchaos.so", version: None, says: &["plugin file removed"] };
    replace_during_a_slow_stop: Race {
        config: "hang_in = \"stop\", hang_ms = 800",
        race: Racing::ReplaceDuringSlowStop,
    } => Converged { file: "libchaos.so", version: Some(2), says: &["plugin reloaded"] };
    rename_chain: Race { config: "", race: Racing::RenameChain }
        => Converged {
            file: "chain-c.so",
            version: Some(0),
            says: &["plugin file removed", "chain-a.so"],
        };

    // Bad config and bad HTTP.
    bad_config_on_post_reload: BadConfig { line: "colour = \"red\"", via: Via::Post }
        => ConfigRefused { key: "colour" };
    bad_config_on_sighup: BadConfig { line: "port = \"eighty\"", via: Via::Sighup }
        => ConfigRefused { key: "port" };
    unknown_route: Http { method: "GET", target: Target::Path("/v1/nope"), body: Nothing }
        => Answer { status: 404, says: &["no such endpoint", "GET /v1/nope"] };
    wrong_method:
        Http { method: "DELETE", target: Target::Path("/v1/containers/web"), body: Nothing }
        => Answer { status: 405, says: &["DELETE", "not allowed", "/v1/containers/web"] };
    get_on_a_post_route: Http { method: "GET", target: Target::Path("/v1/reload"), body: Nothing }
        => Answer { status: 405, says: &["GET", "not allowed", "/v1/reload"] };
    huge_body: Http { method: "POST", target: Target::Path("/v1/reload"), body: Huge(10 << 20) }
        => Answer { status: 413, says: &["10485760 bytes", "/v1/reload", "too large"] };
    malformed_json_is_ignored: Http {
        method: "POST",
        target: Target::Path("/v1/reload"),
        body: Json("{\"containers\": [1, "),
    } => Answer { status: 200, says: &["unchanged", "web"] };
    name_escaping_the_path: Http {
        method: "GET",
        target: Target::Path("/v1/containers/..%2F..%2Fetc"),
        body: Nothing,
    } => Answer { status: 404, says: &["no container named `../../etc`"] };
    very_long_name: Http {
        method: "POST",
        target: Target::LongName { before: "/v1/containers/", len: 5000, after: "/stop" },
        body: Nothing,
    } => Answer { status: 404, says: &["no container named `nnnn", "(5000 bytes)"] };
    name_not_utf8:
        Http { method: "GET", target: Target::Path("/v1/containers/%FF%FEweb"), body: Nothing }
        => Answer {
            status: 400,
            says: &["bad container name", "/v1/containers/%FF%FEweb", "UTF-8"],
        };
    name_with_spaces: Http {
        method: "POST",
        target: Target::Path("/v1/containers/my%20web/restart"),
        body: Nothing,
    } => Answer { status: 404, says: &["no container named `my web`"] };
}

#[test]
fn the_matrix_is_big_and_its_names_unique() {
    assert!(CASES.len() >= 25, "{} cases", CASES.len());
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len(), "duplicate case names");
}

/// Runs the row named `name`.
fn run(name: &str) {
    let case = CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    let mut world = World::start(case);
    world.inflict(case);
    world.check(case);
    world.assert_unshaken(case);
    world.finish();
}

/// A host with the bystander `web`, watched.
struct World {
    dir: PluginDir,
    host: Host,
    web_generation: u64,
    echo: SocketAddr,
    watch: Option<Watch>,
    /// Log lines before this came before the fault.
    mark: usize,
}

/// The `[containers.victim]` entry: chaos with `config`, never restarted unless `keys`
/// say otherwise.
fn victim_entry(config: &str, keys: &str) -> String {
    let restart = if keys.contains("restart =") {
        ""
    } else {
        "restart = \"never\"\n"
    };
    format!("[containers.victim]\nplugin = \"chaos\"\n{restart}config = {{ {config} }}\n{keys}\n")
}

/// The config of every case: a short settle time, `web`, and `victim` when the row has one.
fn config_of(fault: &Fault) -> String {
    let mut config = format!(
        "[host]\nsettle_ms = 200\n\n{}",
        echo_entry("web", "bystander")
    );
    match fault {
        Chaos {
            config: chaos,
            keys,
            ..
        } => config.push_str(&victim_entry(chaos, keys)),
        Race { config: chaos, .. } => config.push_str(&victim_entry(chaos, "")),
        _ => {}
    }
    config
}

impl World {
    fn start(case: &Case) -> World {
        let mut dir = PluginDir::with(&[Lib::HttpEcho]);
        dir.write_config(&config_of(&case.fault));
        // An unreadable file is unreadable to root too once the host runs without
        // CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH.
        let host = if matches!(case.fault, File(_, Unreadable)) {
            Host::start_bound_by_file_modes(&dir)
        } else {
            Host::start(&dir)
        };
        let web = host.wait_state("web", "running", STATE_TIMEOUT);
        let echo = host.echo_addr("web");
        let (status, body) = request(echo, "GET", "/", &[], b"");
        assert_eq!(status, 200, "web before the fault: {body}");
        World {
            web_generation: generation(&web),
            watch: Some(Watch::start(echo)),
            mark: host.mark(),
            dir,
            host,
            echo,
        }
    }

    fn inflict(&mut self, case: &Case) {
        match case.fault {
            File(name, content) => self.put_bad_file(name, content),
            Chaos { then, .. } => {
                self.dir
                    .put("libchaos.so", &versioned_bytes(Lib::Chaos, 0), Put::Rename);
                if let Then::Stop = then {
                    self.host.wait_state("victim", "running", STATE_TIMEOUT);
                    let (status, body) = self.host.post("/v1/containers/victim/stop");
                    assert_eq!(status, 200, "stop victim: {body}");
                }
            }
            Race { race, .. } => self.race(race),
            // Requests are made, and their answers checked, in `check`.
            Http { .. } => {}
            BadConfig { line, via } => {
                let mut config = config_of(&case.fault);
                config.push_str(line);
                config.push('\n');
                self.dir.write_config(&config);
                if let Via::Sighup = via {
                    self.host.signal(Signal::SIGHUP);
                }
            }
        }
    }

    fn put_bad_file(&self, name: &str, content: Content) {
        let chaos = lib_bytes(Lib::Chaos);
        let path = self.dir.plugins().join(name);
        let bytes: Vec<u8> = match content {
            Empty => Vec::new(),
            Text => b"#!/bin/sh\necho this is not a plugin\n".repeat(100),
            Head(n) => chaos[..n].to_vec(),
            Half => chaos[..chaos.len() / 2].to_vec(),
            AllBut(n) => chaos[..chaos.len() - n].to_vec(),
            OtherArch => {
                let mut bytes = chaos.to_vec();
                // e_machine, at offset 18 of the ELF header.
                let other: u16 = if cfg!(target_arch = "aarch64") {
                    62
                } else {
                    183
                };
                bytes[18..20].copy_from_slice(&other.to_le_bytes());
                bytes
            }
            SystemLib => std::fs::read(libm_path()).expect("read libm"),
            Fixture(lib) => lib_bytes(lib).to_vec(),
            Sparse(len) => {
                let file = std::fs::File::create(&path).expect("create the sparse file");
                file.set_len(len).expect("grow the sparse file");
                return;
            }
            Unreadable => {
                let staged = self.dir.staging().join(name);
                balut_tests::write_bytes(&staged, &lib_bytes(Lib::NoExport));
                set_mode(&staged, 0o000);
                std::fs::rename(&staged, &path).expect("mv into the folder");
                return;
            }
            Folder => {
                std::fs::create_dir(&path).expect("create the folder");
                return;
            }
            SymlinkLoop(other) => {
                std::os::unix::fs::symlink(other, &path).expect("symlink a -> b");
                std::os::unix::fs::symlink(name, self.dir.plugins().join(other))
                    .expect("symlink b -> a");
                return;
            }
        };
        self.dir.put(name, &bytes, Put::Rename);
    }

    fn race(&self, race: Racing) {
        let (host, dir) = (&self.host, &self.dir);
        let v = |n| versioned_bytes(Lib::Chaos, n);
        let victim_logged = |what: &str| {
            let mark = self.mark;
            host.wait_until(&format!("victim to log {what:?}"), STATE_TIMEOUT, |h| {
                h.lines_since(mark)
                    .into_iter()
                    .find(|l| l.contains(what) && has_field(l, "container", "victim"))
            });
        };
        match race {
            Racing::ReplaceDuringSlowStart => {
                dir.put("libchaos.so", &v(0), Put::Rename);
                victim_logged("delaying start");
                dir.put("libchaos.so", &v(1), Put::Rename);
            }
            Racing::RemoveDuringSlowStart => {
                dir.put("libchaos.so", &v(0), Put::Rename);
                victim_logged("delaying start");
                dir.remove("libchaos.so");
            }
            Racing::ReplaceDuringSlowStop => {
                dir.put("libchaos.so", &v(0), Put::Rename);
                wait_running_on(host, "victim", &sha12(&v(0)));
                dir.put("libchaos.so", &v(1), Put::Rename);
                victim_logged("hanging");
                dir.put("libchaos.so", &v(2), Put::Rename);
            }
            Racing::RenameChain => {
                dir.put("chain-a.so", &v(0), Put::Rename);
                wait_running_on(host, "victim", &sha12(&v(0)));
                let path = |name| dir.plugins().join(name);
                std::fs::rename(path("chain-a.so"), path("chain-b.so")).expect("mv a b");
                std::fs::rename(path("chain-b.so"), path("chain-c.so")).expect("mv b c");
            }
        }
    }

    fn check(&self, case: &Case) {
        let host = &self.host;
        match case.expect {
            Refused { kind, says } => {
                let File(file, _) = case.fault else {
                    panic!("{}: Refused is for files", case.name)
                };
                let entry =
                    host.wait_plugin(file, "refused", STATE_TIMEOUT, |p| p["status"] == "error");
                assert_eq!(entry["error_kind"], kind, "{entry}");
                let error = entry["error"].as_str().unwrap_or_default();
                assert_says(error, file, says);
                host.wait_for("a `plugin file refused` line", STATE_TIMEOUT, |h| {
                    !refused_lines(&h.lines(), file).is_empty()
                });
                assert!(
                    host.containers().iter().all(|c| c["name"] == "web"),
                    "a refused file made a container: {:?}",
                    host.containers()
                );
            }
            Victim { state, says } => {
                let victim = self.wait_victim(&format!("{state:?} saying {says:?}"), |c| {
                    c["state"] == state
                        && c["last_error"]
                            .as_str()
                            .is_some_and(|e| says.iter().all(|s| e.contains(s)))
                });
                assert!(generation(&victim) >= 1, "{victim}");
                self.wait_victim_log("container failed", says);
            }
            Runs { says } => {
                let victim = self.wait_victim("running", |c| c["state"] == "running");
                assert!(victim["last_error"].is_null(), "{victim}");
                self.wait_victim_log(says[0], &says[1..]);
            }
            Flaps => {
                self.wait_victim_log("health check failed", &["chaos: flapping"]);
                let c = host.wait_until(
                    "victim healthy again after an unhealthy check",
                    STATE_TIMEOUT,
                    |h| {
                        let c = h.get_json("/v1/containers/victim");
                        let ok: Vec<bool> = c["probes"]
                            .as_array()?
                            .iter()
                            .filter(|p| p["probe"] == "liveness")
                            .map(|p| p["ok"] == true)
                            .collect();
                        let sick = ok.iter().position(|ok| !ok)?;
                        ok[sick..].contains(&true).then_some(c)
                    },
                );
                assert_eq!(c["state"], "running", "flapping is not failing: {c}");
                assert_eq!(c["restarts"], 0, "{c}");
            }
            NotReady { says } => {
                // Probe results are in the one-container view only.
                let victim = host.wait_until(
                    "victim running, not ready, its readiness probe failing",
                    STATE_TIMEOUT,
                    |h| {
                        let c = h.get_json("/v1/containers/victim");
                        (c["state"] == "running"
                            && c["ready"] == false
                            && failed_readiness(&c, says))
                        .then_some(c)
                    },
                );
                assert!(victim["last_error"].is_null(), "{victim}");
                self.wait_victim_log("readiness check failed", says);
            }
            NotUnloaded { says } => {
                self.wait_victim("stopped", |c| c["state"] == "stopped");
                let entry = host.wait_until("libchaos.so in not_unloaded", STATE_TIMEOUT, |h| {
                    h.get_json("/v1/plugins")["not_unloaded"]
                        .as_array()?
                        .iter()
                        .find(|u| u["file"] == "libchaos.so")
                        .cloned()
                });
                let reason = entry["reason"].as_str().unwrap_or_default();
                assert_says(reason, "", says);
                host.wait_log("library still mapped", STATE_TIMEOUT);
            }
            LogTruncated => {
                self.wait_victim("running", |c| c["state"] == "running");
                let line = self.wait_victim_log("long line: xxx", &["… (truncated"]);
                assert!(
                    line.len() < 70 * 1024,
                    "a {} byte log line came through",
                    line.len()
                );
                assert!(line.contains(&format!("truncated {} bytes", 1_000_000 - 64 * 1024)));
            }
            Converged {
                file,
                version,
                says,
            } => self.check_converged(file, version, says),
            Answer { status, says } => {
                let Http {
                    method,
                    target,
                    body,
                } = case.fault
                else {
                    panic!("{}: Answer is for requests", case.name)
                };
                self.check_answer(method, target, body, status, says);
            }
            ConfigRefused { key } => {
                let BadConfig { via, .. } = case.fault else {
                    panic!("{}: ConfigRefused is for configs", case.name)
                };
                let line_no = config_of(&case.fault).lines().count() + 1;
                let error = match via {
                    Via::Post => {
                        let (status, body) = self.host.post("/v1/reload");
                        assert_eq!(status, 400, "{body}");
                        body["error"].as_str().unwrap_or_default().to_owned()
                    }
                    Via::Sighup => host.wait_log("config reload refused", STATE_TIMEOUT),
                };
                let line = format!("line {line_no}");
                assert_says(
                    &error,
                    "balut.toml",
                    &[&line, key, "old config stays in force"],
                );
            }
        }
    }

    /// Waits for `victim` to satisfy `pred`.
    fn wait_victim(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.host
            .wait_until(&format!("victim to be {what}"), STATE_TIMEOUT, |h| {
                h.find_container("victim").filter(|c| pred(c))
            })
    }

    /// Waits for a log line (since the fault) about `victim` with `first` and each of `rest`.
    fn wait_victim_log(&self, first: &str, rest: &[&str]) -> String {
        let mark = self.mark;
        self.host.wait_until(
            &format!("a victim line with {first:?} and {rest:?}"),
            STATE_TIMEOUT,
            |h| {
                h.lines_since(mark).into_iter().find(|l| {
                    has_field(l, "container", "victim")
                        && l.contains(first)
                        && rest.iter().all(|r| l.contains(r))
                })
            },
        )
    }

    fn check_converged(&self, file: &str, version: Option<u64>, says: &[&str]) {
        let host = &self.host;
        let mark = self.mark;
        host.wait_until(
            &format!("a line with {says:?} about {file}"),
            STATE_TIMEOUT,
            |h| {
                h.lines_since(mark)
                    .into_iter()
                    .find(|l| says.iter().all(|s| l.contains(s)))
            },
        );
        let stem = file.trim_end_matches(".so");
        let mut expected = vec!["libhttp_echo.so"];
        match version {
            Some(n) => {
                let sha = sha12(&versioned_bytes(Lib::Chaos, n));
                let victim = wait_running_on(host, "victim", &sha);
                assert_eq!(victim["file"], file, "{victim}");
                wait_loaded(host, file, &sha);
                wait_single_copy(host, stem, &sha);
                expected.push(file);
            }
            None => {
                host.wait_plugin_gone(file, STATE_TIMEOUT);
                let victim = self.wait_victim("stopped", |c| c["state"] == "stopped");
                assert_says(
                    victim["last_error"].as_str().unwrap_or_default(),
                    file,
                    &["was removed"],
                );
                wait_no_copy(host, stem);
            }
        }
        expected.sort_unstable();
        let listed: Vec<String> = host
            .plugins()
            .iter()
            .filter_map(|p| p["file"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(listed, expected, "/v1/plugins does not match the folder");
        assert!(
            host.plugins().iter().all(|p| p["error_kind"].is_null()),
            "{:?}",
            host.plugins()
        );
    }

    fn check_answer(&self, method: &str, target: Target, body: Body, status: u16, says: &[&str]) {
        let path = match target {
            Target::Path(path) => path.to_owned(),
            Target::LongName { before, len, after } => {
                format!("{before}{}{after}", "n".repeat(len))
            }
        };
        let (got, text) = match body {
            Nothing => request(self.host.addr(), method, &path, &[], b""),
            Json(json) => request(
                self.host.addr(),
                method,
                &path,
                &[("Content-Type", "application/json")],
                json.as_bytes(),
            ),
            Huge(len) => huge_request(self.host.addr(), method, &path, len),
        };
        assert_eq!(got, status, "{method} {path}: {text}");
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} answered no JSON ({e}): {text:?}"));
        let said = if status < 300 {
            json.to_string()
        } else {
            let error = json["error"].as_str().unwrap_or_default().to_owned();
            assert!(
                error.len() < 400,
                "a {}-byte error is no clear error",
                error.len()
            );
            error
        };
        assert_says(&said, "", says);
    }

    /// The host is up and `web` was not disturbed.
    fn assert_unshaken(&mut self, case: &Case) {
        let host = &mut self.host;
        assert!(
            host.is_running(),
            "{}: the host died\n{}",
            case.name,
            host.logs()
        );
        let (status, body) = host.get("/healthz");
        assert_eq!((status, &body["status"]), (200, &"ok".into()), "{body}");
        let web = host.container("web");
        assert_eq!(web["state"], "running", "{web}");
        assert!(web["last_error"].is_null(), "{web}");
        assert_eq!(
            generation(&web),
            self.web_generation,
            "web was reloaded: {web}"
        );
        assert_eq!(
            first_stop_of(&host.lines_since(self.mark), "web"),
            None,
            "web was stopped"
        );
        let watch = self.watch.take().expect("the watch runs until now");
        let (answered, failures) = watch.finish();
        assert!(
            failures.is_empty(),
            "web failed {} of its polls during the fault: {failures:?}",
            failures.len()
        );
        assert!(answered > 0, "web was never polled");
        let (status, body) = request(self.echo, "GET", "/", &[], b"");
        assert_eq!(status, 200, "web after the fault: {body}");
        assert!(body.contains("bystander"), "{body:?}");
    }

    /// SIGTERM: the host exits by itself, whatever the fault left behind.
    fn finish(mut self) {
        self.host.signal(Signal::SIGTERM);
        let status = self.host.wait_exit(EXIT_TIMEOUT);
        assert!(
            status.code().is_some(),
            "the host died of a signal at shutdown: {status}\n{}",
            self.host.logs()
        );
        drop(self.dir);
    }
}

/// `text` contains `file` (unless empty) and each of `says`.
/// Whether `c`'s readiness probes (in the one-container view) include a failure saying each
/// of `says`.
fn failed_readiness(c: &Value, says: &[&str]) -> bool {
    c["probes"].as_array().is_some_and(|probes| {
        probes.iter().any(|p| {
            p["probe"] == "readiness"
                && p["ok"] == false
                && p["message"]
                    .as_str()
                    .is_some_and(|m| says.iter().all(|s| m.contains(s)))
        })
    })
}

fn assert_says(text: &str, file: &str, says: &[&str]) {
    assert!(
        file.is_empty() || text.contains(file),
        "{text:?} does not name {file}"
    );
    for needle in says {
        assert!(text.contains(needle), "{text:?} does not say {needle:?}");
    }
}

/// libm of this system: a shared library that is no plugin.
fn libm_path() -> std::path::PathBuf {
    let candidates = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no libm.so.6 in {candidates:?}"))
}

/// One HTTP/1.1 request on a fresh connection: status and body text.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

pub(crate) fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut socket = connect(addr)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket
        .write_all(head.as_bytes())
        .and_then(|()| socket.write_all(body))
        .map_err(|e| format!("sending: {e}"))?;
    read_response(&mut socket)
}

/// Announces a body of `len` bytes, reads the answer to the head alone, then sends what
/// the host still takes of the body (it may close the connection: that is fine).
fn huge_request(addr: SocketAddr, method: &str, path: &str, len: usize) -> (u16, String) {
    let mut socket = connect(addr).unwrap_or_else(|e| panic!("{e}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).expect("send the head");
    let answer = read_response(&mut socket).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..len / chunk.len() {
        if socket.write_all(&chunk).is_err() {
            break;
        }
    }
    answer
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Reads a `Connection: close` response with a `Content-Length` body.
fn read_response(socket: &mut TcpStream) -> Result<(u16, String), String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(format!("reading the answer: {e}")),
            Err(_) => break,
        }
        if let Some(done) = whole_response(&raw) {
            return Ok(done);
        }
    }
    whole_response(&raw).ok_or_else(|| {
        format!(
            "incomplete answer: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(500)])
        )
    })
}

/// Status and body of `raw` once it holds the whole head and `Content-Length` bytes.
fn whole_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| (status, body.to_owned()))
}

/// Polls `GET /` on the bystander every 50 ms on a thread until [`Watch::finish`] (at
/// least once).
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u32, Vec<String>)>>,
}

impl Watch {
    pub(crate) fn start(echo: SocketAddr) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut answered, mut failures) = (0, Vec::new());
            // At least one poll, however short the fault.
            loop {
                match try_request(echo, "GET", "/", &[], b"") {
                    Ok((200, _)) => answered += 1,
                    Ok((status, body)) => failures.push(format!("{status}: {body}")),
                    Err(e) => failures.push(e),
                }
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (answered, failures)
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    /// How many polls `web` answered, and what went wrong with the others.
    pub(crate) fn finish(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("finish is called once")
            .join()
            .expect("the watch thread does not panic")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
