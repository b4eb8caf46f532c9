//! Library initializers and finalizers that hang, crash or exit. They run under the C
//! library's loader lock: in the host they would block every later load or end the host.
//! New content is first opened and closed in a pre-flight child process, and the host's own
//! `dlclose` runs on a thread of its own, so none of this reaches the host.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal};

const QUICK_LOADS: &str = "[host]\nload_timeout_ms = 2000\nshutdown_timeout_ms = 5000\n";

fn host_with_trap(trap: &str, libs: &[Lib]) -> (PluginDir, Host) {
    let mut dir = PluginDir::with(libs);
    dir.write_config(QUICK_LOADS);
    let host = Host::start_with_env(&dir, &[("BALUT_TRAP", OsString::from(trap))]);
    (dir, host)
}

/// The host still loads other plugins, answers, and exits cleanly on SIGTERM.
fn host_is_unharmed(host: Host, dir: &PluginDir) {
    dir.add(Lib::NeedsDb);
    let entry = host.wait_plugin("libfixture_needs_db.so", "loaded", STATE_TIMEOUT, |p| {
        p["status"] != "loading"
    });
    assert_ne!(
        entry["error_kind"], "load_timeout",
        "the next load was blocked: {entry}"
    );
    answers_and_exits_cleanly(host);
}

/// The bystander runs, `/healthz` answers, and SIGTERM ends the host cleanly and soon.
fn answers_and_exits_cleanly(mut host: Host) {
    assert_eq!(host.state("chaos"), "running");
    let (status, body) = host.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let at = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", host.logs());
    assert!(
        at.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        at.elapsed()
    );
}

fn refused_for(host: &Host, needle: &str) -> serde_json::Value {
    let entry = host.wait_plugin_status("libfixture_traps.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "initializer_failed", "{entry}");
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("libfixture_traps.so") && error.contains(needle),
        "the error names the file and says `{needle}`: {entry}"
    );
    entry
}

/// With `trap` set, the traps file is refused saying `needle`, and nothing else suffers.
fn refused_and_unharmed(trap: &str, needle: &str) {
    let (dir, host) = host_with_trap(trap, &[Lib::Chaos, Lib::Traps]);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    refused_for(&host, needle);
    host_is_unharmed(host, &dir);
}

#[test]
fn an_initializer_that_hangs_is_refused_and_blocks_nothing() {
    refused_and_unharmed("init-hang", "initializers or finalizers hang");
}

#[test]
fn an_initializer_that_crashes_is_refused_and_the_host_lives() {
    refused_and_unharmed("init-crash", "SIGABRT");
}

#[test]
fn an_initializer_that_exits_is_refused_and_the_host_lives() {
    refused_and_unharmed("init-exit", "exited with code 3");
}

/// Ignored in the default run: once in several full parallel runs of the suite the host
/// stopped answering for the whole wait right after the close began (seen once in CI, never
/// alone); the cause is not understood yet. Run it with
/// `cargo test -p balut-tests --test e2e -- --ignored traps::a_finalizer`.
#[test]
#[ignore = "a rare stall under the full parallel suite, not understood yet (see the doc comment)"]
fn a_finalizer_that_hangs_in_the_host_leaves_it_answering_and_exiting() {
    let (dir, host) = host_with_trap("fini-hang-in-host", &[Lib::Chaos, Lib::Traps]);
    host.wait_state("traps", "running", STATE_TIMEOUT);
    dir.remove(Lib::Traps.file_name());
    // Its close hangs on a thread of its own; after the load timeout it is listed.
    let pinned = host.wait_until("the hung close to be listed", STATE_TIMEOUT, |h| {
        let plugins = h.get_json("/v1/plugins");
        plugins["not_unloaded"]
            .as_array()
            .and_then(|list| list.iter().find(|n| n["plugin"] == "traps").cloned())
    });
    assert!(
        pinned["reason"]
            .as_str()
            .is_some_and(|r| r.contains("dlclose did not return")),
        "{pinned}"
    );
    // The supervisor and the API go on. (The hung finalizer holds the C library's loader
    // lock, so this process can start no thread until it returns: new containers and loads
    // wait. The pre-flight keeps such files out; this one hangs only outside it.)
    answers_and_exits_cleanly(host);
}
