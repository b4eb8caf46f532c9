//! Interface evolution: plugins built against the frozen interface 1.0 and 1.2 APIs
//! (`tests/fixtures/old-api`, `tests/fixtures/api-1.2`) load, run, reload and unload in this
//! host (1.3), beside 1.3 plugins; and the 1.1 additions (readiness, reported failures,
//! default requirements) work end to end.

use std::time::{Duration, Instant};

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, Put, STATE_TIMEOUT, Signal, api_1_2_plugin, old_api_plugin,
};

use crate::terminate_cleanly;

/// How many private copies of `stem` the host has mapped.
fn mapped(host: &Host, stem: &str) -> usize {
    let prefix = format!("{stem}-g");
    host.mapped_copies()
        .iter()
        .filter(|c| c.starts_with(&prefix))
        .count()
}

#[test]
fn a_plugin_built_for_interface_1_0_loads_runs_and_unloads_again_and_again() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    dir.copy_file(old_api_plugin(), "libold_timer.so");
    let mut host = Host::start(&dir);
    host.wait_state("old-timer", "running", STATE_TIMEOUT);
    host.wait_state("chaos", "running", STATE_TIMEOUT);

    let old = host.plugin("libold_timer.so");
    assert_eq!(old["status"], "loaded", "{old}");
    assert_eq!(old["interface_version"], "1.0", "{old}");
    assert_eq!(host.plugin("libchaos.so")["interface_version"], "1.3");
    host.wait_log("old timer started on interface 1.0", STATE_TIMEOUT);
    assert_eq!(host.container("old-timer")["ready"], true);

    for cycle in 1..=5u64 {
        let (status, body) = host.post("/v1/containers/old-timer/stop");
        assert_eq!(status, 200, "{body}");
        host.wait_state("old-timer", "stopped", STATE_TIMEOUT);
        host.wait_for("the 1.0 library to be unmapped", STATE_TIMEOUT, |h| {
            mapped(h, "libold_timer") == 0
        });
        let (status, body) = host.post("/v1/containers/old-timer/start");
        assert_eq!(status, 200, "{body}");
        let c = host.wait_state("old-timer", "running", STATE_TIMEOUT);
        assert_eq!(c["generation"], cycle + 1, "{c}");
    }
    let unloads = host
        .lines()
        .iter()
        .filter(|l| {
            l.contains("library unloaded")
                && l.contains("libold_timer")
                && l.contains("mapped=false")
        })
        .count();
    assert_eq!(unloads, 5, "{}", host.logs());
    assert_eq!(host.container("chaos")["state"], "running");

    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", host.logs());
    assert!(
        host.logs().contains("old timer stopped"),
        "the 1.0 plugin's stop ran"
    );
}

#[test]
fn readiness_reported_by_the_plugin_holds_back_its_dependents() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(
        "[containers.slow]\nplugin = \"chaos\"\nconfig = { ready_after_ms = 1500 }\n\
         [containers.app]\nplugin = \"chaos\"\nrequires = [\"slow\"]\n",
    );
    let began = Instant::now();
    let mut host = Host::start(&dir);
    let slow = host.wait_state("slow", "running", STATE_TIMEOUT);
    assert_eq!(slow["ready"], false, "it said it is not ready yet: {slow}");
    let app = host.wait_state("app", "waiting", STATE_TIMEOUT);
    assert!(
        app["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for slow"),
        "{app}"
    );
    host.wait_state("app", "running", STATE_TIMEOUT);
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "app started before slow reported ready"
    );
    assert_eq!(host.container("slow")["ready"], true);
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

#[test]
fn a_reported_failure_acts_at_once() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(
        "[containers.flaky]\nplugin = \"chaos\"\nrestart = \"never\"\n\
         config = { report_failure_after_ms = 300 }\n",
    );
    let mut host = Host::start(&dir);
    host.wait_state("flaky", "running", STATE_TIMEOUT);
    let failed = host.wait_state("flaky", "failed", STATE_TIMEOUT);
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("chaos: failure reported as configured"),
        "{failed}"
    );
    host.signal(Signal::SIGTERM);
    host.wait_exit(EXIT_TIMEOUT);
}

#[test]
fn a_failing_readiness_check_marks_not_ready_without_a_restart() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(
        "[containers.shy]\nplugin = \"chaos\"\nconfig = { fail_ready_after = 2 }\n\
         readiness = { period_ms = 100 }\n",
    );
    let mut host = Host::start(&dir);
    host.wait_state("shy", "running", STATE_TIMEOUT);
    host.wait_for("shy to become not ready", STATE_TIMEOUT, |h| {
        h.container("shy")["ready"] == false
    });
    let shy = host.container("shy");
    assert_eq!(shy["state"], "running", "{shy}");
    assert_eq!(shy["restarts"], 0, "{shy}");
    // Probe results are in the one-container view.
    let probes = host.get_json("/v1/containers/shy")["probes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        probes
            .iter()
            .any(|p| p["probe"] == "readiness" && p["ok"] == false),
        "{shy}"
    );
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

#[test]
fn a_plugin_default_requirement_applies_unless_the_config_overrides_it() {
    let mut dir = PluginDir::with(&[Lib::Chaos, Lib::NeedsDb]);
    // `db` comes up late; the default instance of needs-db waits for it.
    dir.write_config("[containers.db]\nplugin = \"chaos\"\nconfig = { start_delay_ms = 800 }\n");
    let mut host = Host::start(&dir);
    let needs = host.wait_state("needs-db", "running", STATE_TIMEOUT);
    assert_eq!(needs["requires"], serde_json::json!(["db"]), "{needs}");
    let lines = host.lines();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains("container running") && l.contains(what))
    };
    assert!(
        at("container=db") < at("container=needs-db"),
        "{}",
        host.logs()
    );
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(EXIT_TIMEOUT).code(), Some(0));

    // An instance whose config sets `requires = []` does not wait.
    let mut dir = PluginDir::with(&[Lib::NeedsDb]);
    dir.write_config("[containers.alone]\nplugin = \"needs-db\"\nrequires = []\n");
    let mut host = Host::start(&dir);
    let alone = host.wait_state("alone", "running", STATE_TIMEOUT);
    assert_eq!(alone["requires"], serde_json::json!([]), "{alone}");
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

/// A plugin built against interface 1.2 (`tests/fixtures/api-1.2`, before held sockets and
/// hand-over) in this 1.3 host: its config is checked by its own type, it reports readiness,
/// and it is hot-reloaded both ways: stop-first, and overlapping, where the host asks it for
/// its state through a vtable that has no hand-over (the default answers "nothing").
#[test]
fn a_plugin_built_for_interface_1_2_loads_checks_its_config_and_reloads_both_ways() {
    let mut dir = PluginDir::new();
    let config = |reload: &str, extra: &str| {
        format!(
            "[containers.timer]\nplugin = \"timer-1-2\"\nreload = \"{reload}\"\nconfig = {{ interval_ms = 5{extra} }}\n"
        )
    };
    dir.write_config(&config("stop-first", ""));
    let bytes = std::fs::read(api_1_2_plugin()).expect("the 1.2 fixture");
    dir.put("libtimer.so", &bytes, Put::Rename);
    let host = Host::start(&dir);
    host.wait_state("timer", "running", STATE_TIMEOUT);
    assert_eq!(host.plugin("libtimer.so")["interface_version"], "1.2");
    host.wait_log("timer started on interface 1.2", STATE_TIMEOUT);
    assert_eq!(host.container("timer")["ready"], true);

    // Its own config type (1.2's check_config) names the key it refuses.
    dir.write_config(&config("stop-first", ", colour = 1"));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(text.contains("containers.timer.config"), "{text}");
    assert!(text.contains("colour"), "{text}");

    // Stop-first, then overlapping reloads of new content.
    for (n, reload) in [(1u8, "stop-first"), (2, "overlap"), (3, "overlap")] {
        dir.write_config(&config(reload, ""));
        let (status, body) = host.post("/v1/reload");
        assert_eq!(status, 200, "{body}");
        let mut next = bytes.clone();
        next.extend_from_slice(&[n; 16]);
        dir.put("libtimer.so", &next, Put::Rename);
        let generation = u64::from(n) + 1;
        host.wait_for(
            &format!("generation {generation} running"),
            STATE_TIMEOUT,
            |h| {
                let c = h.container("timer");
                c["state"] == "running" && c["generation"] == generation
            },
        );
    }
    let lines = host.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("starting the new instance beside the running one")),
        "no overlapping reload in the log:\n{}",
        host.logs()
    );
    assert!(
        host.plugin("libtimer.so")["error"].is_null(),
        "{}",
        host.plugin("libtimer.so")
    );
    terminate_cleanly(host);
}
