//! Supervision: liveness failures restart a container, restart storms end in quarantine,
//! dependencies start in order and stop in reverse, a failed requirement takes its
//! dependents down and brings them back, independent containers start in parallel, and the
//! shutdown budget holds even against a stop that never returns.
//!
//! Every test uses short periods and backoffs so it takes a few seconds; the generous
//! timeouts only catch hangs.

use std::time::{Duration, Instant};

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, field_values, has_field,
};
use serde_json::Value;

use crate::{chaos_entry, echo_entry, is_rfc3339, terminate};

/// A `[containers.NAME]` entry for a chaos instance with the host's default restart policy
/// (`on-failure`), the given chaos config and extra keys (whole lines, e.g. `requires`).
pub(crate) fn chaos(name: &str, config: &str, extra: &str) -> String {
    format!("[containers.{name}]\nplugin = \"chaos\"\nconfig = {{ {config} }}\n{extra}")
}

/// Starts a host with the chaos library and the given config. (Only chaos: a library
/// without a configured instance gets a default one, and http-echo's would fight over its
/// default port with other hosts.)
fn host_with(config: &str) -> (PluginDir, Host) {
    host_with_libs(&[Lib::Chaos], config)
}

/// Starts a host with the given libraries and config.
pub(crate) fn host_with_libs(libs: &[Lib], config: &str) -> (PluginDir, Host) {
    let mut dir = PluginDir::with(libs);
    dir.write_config(config);
    let host = Host::start(&dir);
    (dir, host)
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC timestamp as the host writes them
/// (`YYYY-MM-DDTHH:MM:SS[.fff]Z`).
fn epoch_ms(ts: &str) -> i64 {
    assert!(is_rfc3339(ts), "not an RFC 3339 timestamp: {ts:?}");
    assert!(ts.ends_with('Z'), "not a UTC timestamp: {ts:?}");
    let num = |r: std::ops::Range<usize>| -> i64 {
        ts[r]
            .parse()
            .unwrap_or_else(|e| panic!("bad timestamp {ts:?}: {e}"))
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    let frac = ts[19..ts.len() - 1].strip_prefix('.').unwrap_or("");
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().expect("fraction digits")
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms
}

/// `epoch_ms` of a string field of a container's JSON.
fn ms_field(c: &Value, key: &str) -> i64 {
    epoch_ms(
        c[key]
            .as_str()
            .unwrap_or_else(|| panic!("`{key}` is not a string: {c}")),
    )
}

/// The containers among `names` that the log lines with `message` name, in line order
/// (one entry per line).
fn named_in_order(lines: &[String], message: &str, names: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            field_values(l, "container")
                .into_iter()
                .find(|v| names.contains(&v.as_str()))
        })
        .collect()
}

/// Log lines containing `message` with `container=NAME`.
fn lines_of(host: &Host, message: &str, name: &str) -> Vec<String> {
    host.lines_with(&[message])
        .into_iter()
        .filter(|l| has_field(l, "container", name))
        .collect()
}

/// Waits until at least `n` log lines contain `message` with `container=NAME` (log lines
/// arrive through a pipe, so they can trail the state the API already shows).
fn wait_lines(host: &Host, message: &str, name: &str, n: usize) -> Vec<String> {
    host.wait_until(
        &format!("{n} `{message}` line(s) for container {name:?}"),
        STATE_TIMEOUT,
        |h| Some(lines_of(h, message, name)).filter(|l| l.len() >= n),
    )
}

pub(crate) fn last_error(c: &Value) -> &str {
    c["last_error"].as_str().unwrap_or_default()
}

pub(crate) fn restarts(c: &Value) -> u64 {
    c["restarts"]
        .as_u64()
        .unwrap_or_else(|| panic!("`restarts` is not a count: {c}"))
}

#[test]
fn liveness_failure_restarts_the_container() {
    // Healthy for two checks, then unhealthy; two failures in a row kill it: ~400 ms a run.
    let (_dir, mut host) = host_with(&chaos(
        "sick",
        "fail_health_after = 2",
        "liveness = { period_ms = 100, failure_threshold = 2, grace_ms = 0 }\n\
         backoff = { initial_ms = 100 }\n",
    ));
    let first = host.wait_state("sick", "running", STATE_TIMEOUT);
    assert_eq!(restarts(&first), 0, "{first}");
    assert_eq!(first["ready"], true, "{first}");

    // The first retry is immediate: catch the new instance right after its start.
    let again = host.wait_until(
        "sick to run again after a liveness failure",
        STATE_TIMEOUT,
        |h| {
            h.find_container("sick")
                .filter(|c| c["state"] == "running" && restarts(c) >= 1)
        },
    );
    assert!(
        last_error(&again).is_empty(),
        "running clears last_error: {again}"
    );
    // Health starts over with the new instance: nothing yet, or a check of this instance,
    // which is healthy for its first two checks (~200 ms).
    let health = &again["health"];
    if !health.is_null() {
        let checked = ms_field(health, "checked_at");
        let since = ms_field(&again, "since");
        assert!(
            checked >= since,
            "health is from the old instance (checked {checked} < since {since}): {again}"
        );
        assert_eq!(
            health["healthy"], true,
            "health right after the restart: {again}"
        );
    }

    // Its second start is logged after the failure that caused it.
    wait_lines(&host, "container running", "sick", 2);
    let failed = lines_of(&host, "container failed", "sick");
    assert!(
        failed
            .iter()
            .any(|l| l.contains("liveness probe failed 2 times in a row")),
        "no `container failed container=sick error=liveness probe failed ...` line: {failed:#?}"
    );
    assert!(
        !host.lines_with(&["health check failed"]).is_empty(),
        "no `health check failed` line\n{}",
        host.logs()
    );
    assert!(
        !lines_of(&host, "restarting at once", "sick").is_empty(),
        "the first retry is immediate\n{}",
        host.logs()
    );

    // Later failures back off (100, 200, 400, 800 ms, then quarantine after 5 restarts);
    // the reason stays visible while it waits.
    let down = host.wait_until(
        "sick to be down with a liveness reason",
        STATE_TIMEOUT,
        |h| {
            h.find_container("sick").filter(|c| {
                ["failed", "backoff", "quarantined"].contains(&c["state"].as_str().unwrap_or(""))
                    && last_error(c).contains("liveness probe failed")
            })
        },
    );
    assert!(
        last_error(&down).contains("chaos: unhealthy after 2 checks"),
        "{down}"
    );
    if down["state"] != "failed" {
        assert!(
            down["next_retry"].as_str().is_some_and(is_rfc3339),
            "{down}"
        );
    }
    // Probe results are in the one-container view.
    let detail = host.get_json("/v1/containers/sick");
    let probes = detail["probes"].as_array().expect("probes is an array");
    assert!(!probes.is_empty() && probes.len() <= 10, "{detail}");
    assert!(
        probes
            .iter()
            .any(|p| p["probe"] == "liveness" && p["ok"] == false),
        "a failed liveness probe is in the history: {down}"
    );
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code\n{}", host.logs());
}

#[test]
fn restart_storm_ends_in_quarantine_until_a_manual_restart() {
    let (_dir, mut host) = host_with(&format!(
        "{}{}{}",
        chaos(
            "storm",
            "panic_in = \"start\"",
            "backoff = { initial_ms = 20, max_ms = 50, max_restarts = 3, window_ms = 60000, quarantine_retry_ms = 600000 }\n",
        ),
        chaos_entry("never", "panic_in = \"start\""),
        chaos(
            "retried",
            "panic_in = \"start\"",
            "backoff = { initial_ms = 20, max_ms = 50, max_restarts = 1, quarantine_retry_ms = 300 }\n",
        ),
    ));
    let q = host.wait_state("storm", "quarantined", STATE_TIMEOUT);
    assert_eq!(restarts(&q), 3, "{q}");
    assert!(last_error(&q).contains("chaos: panic in start"), "{q}");
    let next = q["next_retry"]
        .as_str()
        .unwrap_or_else(|| panic!("a quarantined container has next_retry: {q}"));
    assert!(is_rfc3339(next), "{q}");
    let wait_s = (epoch_ms(next) - ms_field(&q, "since")) as f64 / 1000.0;
    assert!(
        (590.0..=610.0).contains(&wait_s),
        "next_retry should be quarantine_retry_ms (600 s) away, is {wait_s} s: {q}"
    );
    // Every line of the storm is in once the quarantine line is.
    wait_lines(&host, "too many restarts: quarantined", "storm", 1);
    // 1 immediate retry and 2 after a backoff, then 4 start failures in all.
    assert_eq!(lines_of(&host, "restarting at once", "storm").len(), 1);
    assert_eq!(
        lines_of(&host, "restarting after a backoff", "storm").len(),
        2
    );
    assert_eq!(lines_of(&host, "container failed", "storm").len(), 4);

    // restart = "never": failed, no retry, no restarts counted.
    let never = host.wait_state("never", "failed", STATE_TIMEOUT);
    assert_eq!(restarts(&never), 0, "{never}");
    assert!(never["next_retry"].is_null(), "{never}");
    assert!(
        last_error(&never).contains("chaos: panic in start"),
        "{never}"
    );

    // It stays quarantined (nothing retries it before next_retry).
    std::thread::sleep(Duration::from_millis(500));
    let still = host.container("storm");
    assert_eq!(still["state"], "quarantined", "{still}");
    assert_eq!(restarts(&still), 3, "{still}");

    // A manual restart clears the counters and the quarantine; it fails again at once.
    let (status, body) = host.post("/v1/containers/storm/restart");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "storm", "{body}");
    assert!(
        restarts(&body) <= 1,
        "restart resets the count (0, or 1 after its immediate retry): {body}"
    );
    assert_ne!(body["state"], "quarantined", "{body}");
    wait_lines(&host, "restart requested", "storm", 1);
    // It goes through the whole storm again: 3 more restarts, quarantined a second time.
    wait_lines(&host, "too many restarts: quarantined", "storm", 2);
    assert_eq!(
        lines_of(&host, "too many restarts: quarantined", "storm").len(),
        2
    );
    let q2 = host.wait_state("storm", "quarantined", STATE_TIMEOUT);
    assert_eq!(restarts(&q2), 3, "{q2}");
    assert_eq!(lines_of(&host, "restarting at once", "storm").len(), 2);
    assert_eq!(lines_of(&host, "container failed", "storm").len(), 8);

    // A quarantined container is tried again after quarantine_retry_ms (300 ms here):
    // each try fails and quarantines it again, without counting as a restart.
    wait_lines(&host, "too many restarts: quarantined", "retried", 3);
    let retried = host.container("retried");
    assert_eq!(restarts(&retried), 1, "{retried}");
    assert!(
        lines_of(&host, "container starting", "retried").len() >= 4,
        "1 start, 1 restart, then at least 2 tries out of quarantine\n{}",
        host.logs()
    );

    let never = host.container("never");
    assert_eq!(never["state"], "failed", "{never}");
    assert_eq!(restarts(&never), 0, "{never}");
    assert_eq!(lines_of(&host, "container failed", "never").len(), 1);
    // `retried` tries again every 300 ms: a SIGTERM during one of its starts would give that
    // start up (exit code 1, by design). Stopped first, nothing is in flight.
    let (status, body) = host.post("/v1/containers/retried/stop");
    assert_eq!(status, 200, "{body}");
    let code = terminate(&mut host);
    assert_eq!(code, 0, "nothing was live at shutdown\n{}", host.logs());
}

#[test]
fn hanging_stop_cannot_outlast_the_shutdown_budget() {
    // Two containers whose stop never returns, each with a 10 s stop timeout: only the
    // overall 1.5 s budget can end the shutdown in time. They stop together (neither
    // requires the other).
    // `calm`, which both require, is stopped after them: the budget is gone by then, so it
    // is not called at all and the reason says so (it did nothing wrong).
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "[host]\nshutdown_timeout_ms = 1500\n{}{}stop_timeout_ms = 10000\nrequires = [\"calm\"]\n{}stop_timeout_ms = 10000\nrequires = [\"calm\"]\n",
        chaos_entry("calm", ""),
        chaos_entry("stuck-1", "hang_in = \"stop\""),
        chaos_entry("stuck-2", "hang_in = \"stop\""),
    ));
    let mut host = Host::start(&dir);
    host.wait_state("calm", "running", STATE_TIMEOUT);
    host.wait_state("stuck-1", "running", STATE_TIMEOUT);
    host.wait_state("stuck-2", "running", STATE_TIMEOUT);
    let started = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    let took = started.elapsed();
    eprintln!("[supervise] shutdown with two stuck stops took {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} despite a 1.5 s budget\n{}",
        host.logs()
    );
    assert_eq!(
        status.code(),
        Some(1),
        "a container stuck in stop makes the exit unclean: {status}\n{}",
        host.logs()
    );
    for name in ["stuck-1", "stuck-2", "calm"] {
        assert!(
            !lines_of(&host, "did not stop cleanly", name).is_empty(),
            "no `did not stop cleanly container={name}` line\n{}",
            host.logs()
        );
    }
    let calm = lines_of(&host, "did not stop cleanly", "calm");
    assert!(
        calm.iter().any(|l| l.contains("shutdown budget (1500 ms")),
        "calm's reason should be the used-up budget: {calm:?}"
    );
}

#[test]
fn dependency_chain_starts_in_order_and_stops_in_reverse() {
    // Declared backwards; a and b start slowly so parallel starts cannot fake the order.
    let (_dir, mut host) = host_with(&format!(
        "{}{}{}",
        chaos("c", "", "requires = [\"b\"]\n"),
        chaos("b", "start_delay_ms = 200", "requires = [\"a\"]\n"),
        chaos("a", "start_delay_ms = 200", ""),
    ));
    for name in ["a", "b", "c"] {
        host.wait_state(name, "running", STATE_TIMEOUT);
        wait_lines(&host, "container running", name, 1);
    }
    let names = ["a", "b", "c"];
    assert_eq!(
        named_in_order(&host.lines(), "container running", &names),
        ["a", "b", "c"],
        "start order\n{}",
        host.logs()
    );
    // Each started only after what it requires was running: at least the start delay.
    let (a, b, c) = (
        host.container("a"),
        host.container("b"),
        host.container("c"),
    );
    let (ta, tb, tc) = (
        ms_field(&a, "since"),
        ms_field(&b, "since"),
        ms_field(&c, "since"),
    );
    assert!(tb - ta >= 150, "b ran {} ms after a", tb - ta);
    assert!(tc >= tb, "c ran before b: {b} {c}");
    assert_eq!(c["requires"], serde_json::json!(["b"]), "{c}");
    assert_eq!(b["requires"], serde_json::json!(["a"]), "{b}");
    assert_eq!(a["requires"], serde_json::json!([]), "{a}");
    // c had to wait for b, visibly.
    assert!(
        lines_of(&host, "container waiting", "c")
            .iter()
            .any(|l| l.contains("waiting for b")),
        "no `container waiting container=c reason=waiting for b ...` line\n{}",
        host.logs()
    );

    let mark = host.mark();
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code\n{}", host.logs());
    assert_eq!(
        named_in_order(&host.lines_since(mark), "container stopped", &names),
        ["c", "b", "a"],
        "stop order\n{}",
        host.logs()
    );
}

#[test]
fn failed_requirement_stops_its_dependents_and_they_come_back() {
    // a: healthy for 3 checks at 100 ms, then one failed check kills it. Its start takes
    // 300 ms, so the dependents are seen waiting while it restarts.
    let (_dir, mut host) = host_with(&format!(
        "{}{}{}",
        chaos("c", "", "requires = [\"a\", \"b\"]\n"),
        chaos("b", "", "requires = [\"a\"]\n"),
        chaos(
            "a",
            "fail_health_after = 3, start_delay_ms = 300",
            "restart = \"on-failure\"\n\
             liveness = { period_ms = 100, failure_threshold = 1, grace_ms = 0 }\n\
             backoff = { initial_ms = 200 }\n",
        ),
    ));
    let mut first = Vec::new();
    for name in ["a", "b", "c"] {
        first.push(host.wait_state(name, "running", STATE_TIMEOUT));
    }
    let since_b = first[1]["since"].as_str().unwrap_or_default().to_owned();
    let since_c = first[2]["since"].as_str().unwrap_or_default().to_owned();

    // a fails: b and c are stopped (c first) and wait for it.
    let failed = host.wait_log_where("a to fail its liveness probe", STATE_TIMEOUT, |l| {
        l.contains("container failed") && has_field(l, "container", "a")
    });
    assert!(failed.contains("liveness probe failed"), "{failed}");
    let waiting = host.wait_until("b and c to wait for a", STATE_TIMEOUT, |h| {
        let (b, c) = (h.container("b"), h.container("c"));
        (b["state"] == "waiting" && c["state"] == "waiting").then_some((b, c))
    });
    for c in [&waiting.0, &waiting.1] {
        let why = last_error(c);
        assert!(
            why.contains("requires a, which failed") || why.contains("waiting for a"),
            "{c}"
        );
        assert_eq!(c["ready"], false, "{c}");
    }
    wait_lines(&host, "container stopped", "b", 1);
    let stopping = host.lines_with(&["stopping a dependent"]);
    assert_eq!(
        named_in_order(&stopping, "stopping a dependent", &["b", "c"])[..2],
        ["c", "b"],
        "dependents are stopped, dependents first\n{}",
        host.logs()
    );
    assert!(
        stopping
            .iter()
            .all(|l| l.contains("requires a, which failed")),
        "{stopping:#?}"
    );
    // Each was stopped after a failed, c before b.
    let lines = host.lines();
    let at = |message: &str, name: &str| {
        lines
            .iter()
            .position(|l| l.contains(message) && has_field(l, "container", name))
            .unwrap_or_else(|| panic!("no `{message}` line for {name}\n{}", lines.join("\n")))
    };
    let (a_failed, c_stopped, b_stopped) = (
        at("container failed", "a"),
        at("container stopped", "c"),
        at("container stopped", "b"),
    );
    assert!(
        a_failed < c_stopped && c_stopped < b_stopped,
        "a failed (line {a_failed}), c stopped ({c_stopped}), b stopped ({b_stopped})"
    );
    assert!(
        lines_of(&host, "container failed", "b").is_empty()
            && lines_of(&host, "container failed", "c").is_empty(),
        "stopping a dependent is no failure of its own\n{}",
        host.logs()
    );

    // a comes back, then b and c start again by themselves: new instances.
    let (a, b, c) = host.wait_until("a, b and c to run again", STATE_TIMEOUT, |h| {
        let (a, b, c) = (h.container("a"), h.container("b"), h.container("c"));
        let all = [&a, &b, &c].iter().all(|x| x["state"] == "running");
        (all && b["since"] != since_b.as_str() && c["since"] != since_c.as_str())
            .then_some((a, b, c))
    });
    assert!(restarts(&a) >= 1, "{a}");
    assert!(ms_field(&b, "since") >= ms_field(&a, "since"), "{a}\n{b}");
    assert!(ms_field(&c, "since") >= ms_field(&b, "since"), "{b}\n{c}");
    for name in ["b", "c"] {
        wait_lines(&host, "container running", name, 2);
    }
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code\n{}", host.logs());
}

#[test]
fn missing_requirement_waits_visibly() {
    let (_dir, mut host) = host_with_libs(
        &[Lib::Chaos, Lib::HttpEcho],
        &format!(
            "{}[containers.db]\nplugin = \"not-there\"\n{}",
            echo_entry("http-echo", "still here"),
            chaos("app", "", "requires = [\"db\"]\n"),
        ),
    );
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    let app = host.wait_until("app to wait for db", STATE_TIMEOUT, |h| {
        h.find_container("app")
            .filter(|c| c["state"] == "waiting" && last_error(c).contains("waiting for db"))
    });
    assert_eq!(app["ready"], false, "{app}");
    assert_eq!(app["requires"], serde_json::json!(["db"]), "{app}");
    let db = host.container("db");
    assert_eq!(db["state"], "failed", "{db}");
    assert!(last_error(&db).contains("not-there"), "{db}");
    // It keeps waiting, and was never constructed.
    std::thread::sleep(Duration::from_millis(500));
    let app = host.container("app");
    assert_eq!(app["state"], "waiting", "{app}");
    assert!(
        lines_of(&host, "container starting", "app").is_empty(),
        "app must not start without db\n{}",
        host.logs()
    );
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code\n{}", host.logs());
}

/// Runs `balut run` with `config` and expects it refused at once, `message` on stderr.
fn refused_with(config: &str, message: &str) {
    let out = crate::config::refused(config);
    assert!(
        out.stderr.contains(message),
        "stderr should contain {message:?}: {}",
        out.stderr
    );
}

#[test]
fn cycles_and_unknown_requirements_are_refused() {
    refused_with(
        &format!(
            "{}{}{}",
            chaos("a", "", "requires = [\"c\"]\n"),
            chaos("b", "", "requires = [\"a\"]\n"),
            chaos("c", "", "requires = [\"b\"]\n"),
        ),
        "dependency cycle: a -> c -> b -> a",
    );
    refused_with(
        &format!(
            "{}{}{}",
            chaos("a", "", ""),
            chaos("b", "", "requires = [\"a\"]\n"),
            chaos("c", "", "requires = [\"a\", \"nope\"]\n"),
        ),
        "containers.c.requires: `nope` is not a container declared in this file",
    );
}

#[test]
fn independent_containers_start_in_parallel() {
    let names = ["p1", "p2", "p3", "p4"];
    let config: String = names
        .iter()
        .map(|n| chaos(n, "start_delay_ms = 1000", ""))
        .collect();
    let (_dir, mut host) = host_with(&config);
    let sinces: Vec<i64> = names
        .iter()
        .map(|n| ms_field(&host.wait_state(n, "running", STATE_TIMEOUT), "since"))
        .collect();
    let spread = sinces.iter().max().unwrap() - sinces.iter().min().unwrap();
    eprintln!("[supervise] four 1 s starts reached running within {spread} ms of each other");
    assert!(
        spread < 2500,
        "four independent 1 s starts took {spread} ms from first to last: not in parallel\n{}",
        host.logs()
    );
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code\n{}", host.logs());
}

#[test]
fn manual_restart_stop_and_start_carry_the_dependents() {
    let (_dir, mut host) = host_with(&format!(
        "{}{}{}",
        chaos("a", "", ""),
        chaos("b", "", "requires = [\"a\"]\n"),
        chaos("c", "", "requires = [\"b\"]\n"),
    ));
    let mut first = Vec::new();
    for name in ["a", "b", "c"] {
        first.push(host.wait_state(name, "running", STATE_TIMEOUT));
    }

    // Restart b by hand: c goes down with it and comes back; a is left alone.
    let (status, body) = host.post("/v1/containers/b/restart");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    assert_eq!(restarts(&body), 0, "{body}");
    let stopping = wait_lines(&host, "stopping a dependent", "c", 1);
    assert!(
        stopping[0].contains("requires b, which is restarting"),
        "{stopping:#?}"
    );
    let c = host.wait_until("c to run again", STATE_TIMEOUT, |h| {
        h.find_container("c")
            .filter(|c| c["state"] == "running" && c["since"] != first[2]["since"])
    });
    assert_eq!(
        restarts(&c),
        0,
        "a dependent stopped cleanly is no restart: {c}"
    );
    let a = host.container("a");
    assert_eq!(a["state"], "running", "{a}");
    assert_eq!(a["since"], first[0]["since"], "a was not touched: {a}");
    assert_eq!(lines_of(&host, "container stopped", "a").len(), 0);

    // Stop a: b and c go down too, and everything stays down.
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "stopped", "{body}");
    std::thread::sleep(Duration::from_millis(500));
    let a = host.container("a");
    assert_eq!(a["state"], "stopped", "a stays stopped: {a}");
    for name in ["b", "c"] {
        let c = host.container(name);
        assert_eq!(c["state"], "waiting", "{c}");
        assert_eq!(c["ready"], false, "{c}");
    }
    assert!(
        lines_of(&host, "stopping a dependent", "b")
            .iter()
            .any(|l| l.contains("requires a, which was stopped")),
        "\n{}",
        host.logs()
    );

    // Start a: b and c follow by themselves.
    let (status, body) = host.post("/v1/containers/a/start");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    for name in ["b", "c"] {
        host.wait_state(name, "running", STATE_TIMEOUT);
    }
    for name in ["a", "b", "c"] {
        assert!(
            lines_of(&host, "container failed", name).is_empty(),
            "no failure\n{}",
            host.logs()
        );
    }
    let code = terminate(&mut host);
    assert_eq!(code, 0, "exit code\n{}", host.logs());
}

#[test]
fn independent_containers_stop_together_and_dependents_first() {
    // `a` and `b` need nothing of each other: they stop together (both are stopping before
    // either has stopped); `base`, which both require, stops after both.
    let slow_stop = "hang_in = \"stop\", hang_ms = 300";
    let (_dir, mut host) = host_with(&format!(
        "{}{}{}",
        chaos("base", "", ""),
        chaos("a", slow_stop, "requires = [\"base\"]\n"),
        chaos("b", slow_stop, "requires = [\"base\"]\n"),
    ));
    for name in ["base", "a", "b"] {
        host.wait_state(name, "running", STATE_TIMEOUT);
    }
    let code = terminate(&mut host);
    assert_eq!(code, 0, "{}", host.logs());
    let lines = host.lines();
    let at = |what: &str, name: &str| {
        lines
            .iter()
            .position(|l| l.contains(what) && has_field(l, "container", name))
            .unwrap_or_else(|| panic!("no `{what}` line for {name}\n{}", host.logs()))
    };
    let (a_stopping, b_stopping) = (at("container stopping", "a"), at("container stopping", "b"));
    let (a_stopped, b_stopped) = (at("container stopped", "a"), at("container stopped", "b"));
    assert!(
        a_stopping.max(b_stopping) < a_stopped.min(b_stopped),
        "a and b should stop together\n{}",
        host.logs()
    );
    assert!(
        at("container stopping", "base") > a_stopped.max(b_stopped),
        "base stops after what requires it\n{}",
        host.logs()
    );
}

/// A restart after a backoff constructs a new instance from the generation already in
/// memory: the library is not unloaded while its container waits to restart, so it is
/// not read, hashed, copied and opened again (and its statics live on).
#[test]
fn a_restart_after_a_backoff_reuses_the_loaded_library() {
    let (_dir, mut host) = host_with(&chaos(
        "flaky",
        "report_failure_after_ms = 30",
        "backoff = { initial_ms = 150, max_ms = 150, jitter = 0.0, max_restarts = 1000, window_ms = 60000 }\n",
    ));
    let first = host.wait_state("flaky", "running", STATE_TIMEOUT);
    let generation = first["generation"].clone();
    // The first retry is at once, the next ones after 150 ms in `backoff`.
    let c = host.wait_until("three restarts", STATE_TIMEOUT, |h| {
        let (_, c) = h.get("/v1/containers/flaky");
        (restarts(&c) >= 3).then_some(c)
    });
    wait_lines(&host, "restarting after a backoff", "flaky", 2);
    let flaky = host.wait_state("flaky", "running", STATE_TIMEOUT);
    assert_eq!(flaky["generation"], generation, "{c}\n{flaky}");
    let loaded = host.lines_with(&["library loaded"]);
    assert_eq!(
        loaded.len(),
        1,
        "one load for all the restarts:\n{}",
        host.logs()
    );
    assert!(
        host.lines_with(&["library unloaded"]).is_empty(),
        "unloaded while it waited to restart:\n{}",
        host.logs()
    );
    terminate(&mut host);
}
