//! End-to-end tests: the real `balut` binary, real plugin libraries, real HTTP and signals.
//!
//! One test binary (`cargo test -p balut-tests`); each module is one topic. The harness is in
//! `tests/src/lib.rs`.

mod api;
mod chaos;
mod check;
mod churn_model;
mod config;
mod console;
mod console_http;
mod control;
mod crash;
mod evolution;
mod faults;
mod fixtures;
mod folder;
mod hotplug;
mod isolation;
mod limits;
mod metrics;
mod observe;
mod operators;
mod regressions;
mod run;
mod scaffold;
mod sdnotify;
mod signals;
mod soak;
mod status;
mod supervise;
mod traps;
mod trust;
mod unix;
mod unload;
mod zero_downtime;

use std::sync::atomic::{AtomicUsize, Ordering};

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, Put, STATE_TIMEOUT, Signal, lib_bytes, toml_str,
};

/// A `[containers.NAME]` entry for an http-echo instance on a free loopback port.
pub fn echo_entry(name: &str, message: &str) -> String {
    format!(
        "[containers.{name}]\nplugin = \"http-echo\"\nconfig = {{ bind = \"127.0.0.1\", port = 0, message = {} }}\n",
        toml_str(message)
    )
}

/// A `[containers.NAME]` entry for a ticker instance writing to `path` every `interval_ms`.
pub fn ticker_entry(name: &str, path: &std::path::Path, interval_ms: u64) -> String {
    format!(
        "[containers.{name}]\nplugin = \"ticker\"\nconfig = {{ path = {}, interval_ms = {interval_ms} }}\n",
        toml_str(path.to_str().expect("temp paths are UTF-8"))
    )
}

/// A `[containers.NAME]` entry for a chaos instance with the given inline config table body.
/// It is never restarted, so the state a fault leaves stays visible (`supervise.rs` tests
/// restarts).
pub fn chaos_entry(name: &str, config: &str) -> String {
    format!(
        "[containers.{name}]\nplugin = \"chaos\"\nrestart = \"never\"\nconfig = {{ {config} }}\n"
    )
}

/// Whether `s` looks like an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS...` with an offset).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        r.into_iter()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']))
}

/// Number of lines in a file starting with `tick` (0 when the file does not exist yet).
pub fn tick_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.starts_with("tick")).count())
        .unwrap_or(0)
}

/// Waits until the host has handled every folder change made before this call: drops a file
/// it refuses at once (a whole ELF without the plugin export, so no settling), waits for its
/// error entry, removes it and waits for the entry to go.
pub fn barrier(host: &Host, dir: &PluginDir) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("zz-barrier-{}.so", NEXT.fetch_add(1, Ordering::Relaxed));
    dir.put(&name, &lib_bytes(Lib::NoExport), Put::Rename);
    host.wait_plugin(&name, "refused (barrier)", STATE_TIMEOUT, |p| {
        p["status"] == "error"
    });
    dir.remove(&name);
    host.wait_plugin_gone(&name, STATE_TIMEOUT);
}

/// SIGTERM, wait for the exit and return its code (panics if a signal ended the host).
pub fn terminate(host: &mut Host) -> i32 {
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    status
        .code()
        .unwrap_or_else(|| panic!("balut died of a signal: {status}\n{}", host.logs()))
}

/// SIGTERM and expect a clean exit (code 0).
pub fn terminate_cleanly(mut host: Host) {
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code after SIGTERM\n{}", host.logs());
}
