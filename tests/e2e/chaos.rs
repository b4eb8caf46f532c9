//! The chaos plugin misbehaves on purpose: panics in every call are caught, reported on the
//! right container, and neither the host nor the other containers notice.

use std::time::Duration;

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, has_field, http_get};
use serde_json::Value;

use crate::{chaos_entry, echo_entry};

/// A host with a healthy http-echo and the given chaos instances (`(name, config)`).
fn chaos_host(host_table: &str, instances: &[(&str, &str)]) -> (PluginDir, Host) {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    let mut config = format!(
        "[host]\n{host_table}\n{}",
        echo_entry("http-echo", "unshaken")
    );
    for (name, chaos) in instances {
        config.push_str(&chaos_entry(name, chaos));
    }
    dir.write_config(&config);
    let host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    (dir, host)
}

/// The host still answers, http-echo is still running and serving.
fn assert_unshaken(host: &Host) {
    let echo = host.container("http-echo");
    assert_eq!(echo["state"], "running", "{echo}");
    assert!(echo["last_error"].is_null(), "{echo}");
    let (status, body) = http_get(host.echo_addr("http-echo"), "/");
    assert_eq!(status, 200);
    assert!(body.contains("unshaken"), "{body:?}");
}

fn assert_failed_with(c: &Value, needle: &str) {
    assert_eq!(c["state"], "failed", "{c}");
    let last = c["last_error"].as_str().unwrap_or_default();
    assert!(
        last.contains(needle),
        "last_error should contain {needle:?}: {c}"
    );
}

/// SIGTERM ends the host within the bound; the exit code is whatever the failures make it.
fn terminate(mut host: Host) -> i32 {
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    status
        .code()
        .unwrap_or_else(|| panic!("balut died of a signal: {status}\n{}", host.logs()))
}

#[test]
fn panic_in_new_and_start_fail_only_their_containers() {
    let (_dir, host) = chaos_host(
        "",
        &[
            ("chaos-new", "panic_in = \"new\""),
            ("chaos-start", "panic_in = \"start\""),
            ("calm", ""),
        ],
    );
    let new = host.wait_settled("chaos-new", STATE_TIMEOUT);
    assert_failed_with(&new, "chaos: panic in new");
    let start = host.wait_settled("chaos-start", STATE_TIMEOUT);
    assert_failed_with(&start, "chaos: panic in start");
    host.wait_state("calm", "running", STATE_TIMEOUT);
    let failed = host.lines_with(&["container failed"]);
    assert_eq!(
        failed
            .iter()
            .filter(|l| has_field(l, "container", "chaos-start"))
            .count(),
        1,
        "one failure of chaos-start so far: {failed:#?}"
    );
    assert_unshaken(&host);
    // A failed container can be started again: it fails the same way, the host stays up.
    let (status, body) = host.post("/v1/containers/chaos-start/start");
    assert_eq!(status, 200, "{body}");
    host.wait_for("chaos-start to fail again", STATE_TIMEOUT, |h| {
        h.container("chaos-start")["state"] == "failed"
    });
    assert_unshaken(&host);
    // Containers that failed before SIGTERM do not hold up the shutdown.
    terminate(host);
}

#[test]
fn panic_in_stop_fails_the_container_and_the_exit_code() {
    let (_dir, host) = chaos_host("", &[("chaos-stop", "panic_in = \"stop\"")]);
    host.wait_state("chaos-stop", "running", STATE_TIMEOUT);
    let (status, body) = host.post("/v1/containers/chaos-stop/stop");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "chaos-stop", "{body}");
    let c = host.wait_until("chaos-stop to settle after stop", STATE_TIMEOUT, |h| {
        h.find_container("chaos-stop")
            .filter(|c| c["state"] != "stopping" && c["state"] != "running")
    });
    assert_failed_with(&c, "chaos: panic in stop");
    assert_unshaken(&host);
    // Start it again and let the shutdown hit the panic: the host still ends, non-zero.
    let (status, body) = host.post("/v1/containers/chaos-stop/start");
    assert_eq!(status, 200, "{body}");
    host.wait_state("chaos-stop", "running", STATE_TIMEOUT);
    let code = terminate(host);
    assert_ne!(
        code, 0,
        "a container failed to stop, the exit code must say so"
    );
}

#[test]
fn panic_in_drop_is_caught() {
    let (_dir, host) = chaos_host("", &[("chaos-drop", "panic_in = \"drop\"")]);
    host.wait_state("chaos-drop", "running", STATE_TIMEOUT);
    let (status, body) = host.post("/v1/containers/chaos-drop/stop");
    assert_eq!(status, 200, "{body}");
    let c = host.wait_until("chaos-drop to settle after stop", STATE_TIMEOUT, |h| {
        h.find_container("chaos-drop")
            .filter(|c| c["state"] != "stopping" && c["state"] != "running")
    });
    assert_failed_with(&c, "chaos: panic in drop");
    assert_unshaken(&host);
    terminate(host);
}

#[test]
fn panic_in_health_fails_the_container() {
    let (_dir, host) = chaos_host(
        "health_interval_ms = 200",
        &[("chaos-health", "panic_in = \"health\"")],
    );
    let c = host.wait_until("a health check to fail chaos-health", STATE_TIMEOUT, |h| {
        h.find_container("chaos-health")
            .filter(|c| c["state"] == "failed")
    });
    assert_failed_with(&c, "chaos: panic in health");
    assert_unshaken(&host);
    // The healthy container was checked too and stayed running for several rounds.
    std::thread::sleep(Duration::from_millis(600));
    assert_unshaken(&host);
    terminate(host);
}

#[test]
fn all_panics_in_one_host() {
    let (_dir, host) = chaos_host(
        "health_interval_ms = 200",
        &[
            ("chaos-new", "panic_in = \"new\""),
            ("chaos-start", "panic_in = \"start\""),
            ("chaos-stop", "panic_in = \"stop\""),
            ("chaos-health", "panic_in = \"health\""),
            ("chaos-drop", "panic_in = \"drop\""),
        ],
    );
    assert_failed_with(
        &host.wait_settled("chaos-new", STATE_TIMEOUT),
        "chaos: panic in new",
    );
    assert_failed_with(
        &host.wait_settled("chaos-start", STATE_TIMEOUT),
        "chaos: panic in start",
    );
    let health = host.wait_until("chaos-health to fail", STATE_TIMEOUT, |h| {
        h.find_container("chaos-health")
            .filter(|c| c["state"] == "failed")
    });
    assert_failed_with(&health, "chaos: panic in health");
    assert_eq!(host.state("chaos-stop"), "running");
    assert_eq!(host.state("chaos-drop"), "running");
    assert_unshaken(&host);
    let code = terminate(host);
    assert_ne!(
        code, 0,
        "chaos-stop panicked while stopping, the exit code must say so"
    );
}

#[test]
fn fail_start_and_start_timeout() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    // The hanging start gets a short timeout of its own.
    dir.write_config(&format!(
        "{}{}[containers.chaos-hang]\nplugin = \"chaos\"\nrestart = \"never\"\nconfig = {{ hang_in = \"start\", hang_ms = 3000 }}\nstart_timeout_ms = 300\nstop_timeout_ms = 300\n",
        echo_entry("http-echo", "unshaken"),
        chaos_entry("chaos-fail", "fail_start = true"),
    ));
    let host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    let fail = host.wait_settled("chaos-fail", STATE_TIMEOUT);
    assert_eq!(fail["state"], "failed", "{fail}");
    assert!(
        fail["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{fail}"
    );
    let hang = host.wait_settled("chaos-hang", Duration::from_secs(10));
    assert_eq!(hang["state"], "failed", "{hang}");
    let last = hang["last_error"].as_str().unwrap_or_default();
    assert!(
        last.contains("stuck in start"),
        "last_error should say start is stuck: {hang}"
    );
    // The container's fail_start message is what last_error reports.
    let last = fail["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("chaos: start failed as configured"), "{fail}");
    assert_unshaken(&host);
    terminate(host);
}

#[test]
fn hanging_stop_is_bounded_by_its_timeout() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    // hang_in without hang_ms blocks forever.
    dir.write_config(&format!(
        "{}{}stop_timeout_ms = 500\n",
        echo_entry("http-echo", "unshaken"),
        chaos_entry("chaos-stuck", "hang_in = \"stop\""),
    ));
    let host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    host.wait_state("chaos-stuck", "running", STATE_TIMEOUT);
    let started = std::time::Instant::now();
    let code = terminate(host);
    let took = started.elapsed();
    assert_eq!(code, 1, "a container stuck in stop makes the exit unclean");
    assert!(
        took < Duration::from_secs(15),
        "shutdown took {took:?} despite a 500 ms stop timeout"
    );
}

#[test]
fn second_signal_exits_at_once() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "{}stop_timeout_ms = 120000\n",
        chaos_entry("chaos-stuck", "hang_in = \"stop\"")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("chaos-stuck", "running", STATE_TIMEOUT);
    host.signal(Signal::SIGTERM);
    host.wait_state("chaos-stuck", "stopping", STATE_TIMEOUT);
    host.wait_log("hanging", STATE_TIMEOUT);
    assert!(
        host.is_running(),
        "the host should still wait for the stuck stop"
    );
    host.signal(Signal::SIGINT);
    let status = host.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(130),
        "forced exit: {status}\n{}",
        host.logs()
    );
}

#[test]
fn unhealthy_container_is_reported_not_failed() {
    let (_dir, host) = chaos_host(
        "health_interval_ms = 100",
        &[("chaos-sick", "fail_health_after = 2")],
    );
    let c = host.wait_until("chaos-sick to report unhealthy", STATE_TIMEOUT, |h| {
        h.find_container("chaos-sick")
            .filter(|c| c["health"]["healthy"] == false)
    });
    assert_eq!(
        c["state"], "running",
        "an unhealthy answer is not a failure: {c}"
    );
    assert!(
        c["health"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{c}"
    );
    assert!(
        host.lines_with(&["health check failed"])
            .iter()
            .any(|l| has_field(l, "container", "chaos-sick")),
        "no `health check failed container=chaos-sick` line\n{}",
        host.logs()
    );
    assert_unshaken(&host);
    assert_eq!(terminate(host), 0);
}
