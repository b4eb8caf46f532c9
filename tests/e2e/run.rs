//! `balut run` with the three example plugins: start, serve, stop on a signal.

use std::time::Duration;

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, has_field, http_get};
use serde_json::Value;

use crate::{chaos_entry, echo_entry, is_rfc3339, tick_lines, ticker_entry};

/// Index of the first `container stopped` line of `container`.
fn stopped_index(lines: &[String], container: &str) -> Option<usize> {
    lines
        .iter()
        .position(|l| l.contains("container stopped") && has_field(l, "container", container))
}

#[test]
fn examples_run_serve_and_stop_in_reverse_order_on_sigterm() {
    let mut dir = PluginDir::with(&[Lib::Ticker, Lib::HttpEcho, Lib::Chaos]);
    let ticks = dir.path().join("ticks.log");
    // Same order as the files sort (libchaos < libhttp_echo < libticker), so registration
    // order is chaos, http-echo, ticker however the host interleaves files and config.
    dir.write_config(&format!(
        "{}{}{}",
        chaos_entry("chaos", ""),
        echo_entry("http-echo", "hello from e2e"),
        ticker_entry("ticker", &ticks, 50)
    ));
    let mut host = Host::start(&dir);

    for name in ["chaos", "http-echo", "ticker"] {
        host.wait_state(name, "running", STATE_TIMEOUT);
    }
    let containers = host.containers();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["chaos", "http-echo", "ticker"],
        "registration order: {containers:?}"
    );
    for (c, (plugin, file)) in containers.iter().zip([
        ("chaos", "libchaos.so"),
        ("http-echo", "libhttp_echo.so"),
        ("ticker", "libticker.so"),
    ]) {
        assert_eq!(c["plugin"], plugin, "{c}");
        assert_eq!(c["file"], file, "{c}");
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["generation"], 1, "{c}");
        assert!(c["last_error"].is_null(), "{c}");
        assert!(c["version"].as_str().is_some_and(|v| !v.is_empty()), "{c}");
        assert!(
            c["since"].as_str().is_some_and(is_rfc3339),
            "since is not RFC 3339: {c}"
        );
    }

    let plugins = host.plugins();
    assert_eq!(plugins.len(), 3, "{plugins:?}");
    for p in &plugins {
        assert_eq!(p["status"], "loaded", "{p}");
        assert!(p["error"].is_null() && p["error_kind"].is_null(), "{p}");
        assert_eq!(p["interface_version"], "1.3", "{p}");
        assert_eq!(p["generation"], 1, "{p}");
    }
    let files: Vec<&str> = plugins.iter().filter_map(|p| p["file"].as_str()).collect();
    assert_eq!(
        files,
        ["libchaos.so", "libhttp_echo.so", "libticker.so"],
        "{plugins:?}"
    );

    // http-echo answers real HTTP on the port it logged.
    let echo = host.echo_addr("http-echo");
    assert!(echo.ip().is_loopback(), "{echo}");
    assert_ne!(echo.port(), host.addr().port());
    let (status, body) = http_get(echo, "/");
    assert_eq!(status, 200);
    assert!(
        body.contains("hello from e2e"),
        "http-echo answered {body:?}"
    );

    // ticker's file grows.
    host.wait_for("ticker to write 2 ticks", STATE_TIMEOUT, |_| {
        tick_lines(&ticks) >= 2
    });
    let seen = tick_lines(&ticks);
    host.wait_for("ticker to keep ticking", STATE_TIMEOUT, |_| {
        tick_lines(&ticks) > seen
    });

    // Every line a container logs carries its name.
    assert!(
        host.lines()
            .iter()
            .any(|l| l.contains("container running") && has_field(l, "container", "ticker")),
        "no `container running container=ticker` line"
    );

    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{}",
        host.logs()
    );

    let lines = host.lines();
    let order: Vec<Option<usize>> = ["ticker", "http-echo", "chaos"]
        .iter()
        .map(|c| stopped_index(&lines, c))
        .collect();
    assert!(
        order.iter().all(Option::is_some),
        "missing `container stopped` lines: {order:?}\n{}",
        host.logs()
    );
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "containers did not stop in reverse registration order (ticker, http-echo, chaos): {order:?}\n{}",
        host.logs()
    );

    // Stopped means stopped: the ticker thread is gone, the file no longer grows.
    let after = tick_lines(&ticks);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tick_lines(&ticks), after);
}

#[test]
fn sigint_stops_cleanly_and_unconfigured_plugins_get_default_instances() {
    // chaos and ticker are named by no config entry: each gets one container named after
    // the plugin, with an empty config (ticker needs a `path`, so its constructor refuses).
    // http-echo is configured (its default port 8080 may be taken on this machine).
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos, Lib::Ticker]);
    dir.write_config(&echo_entry("web", "x"));
    let mut host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    host.wait_state("web", "running", STATE_TIMEOUT);
    // Its plugin refuses the empty config: failed for good (no retry can succeed), with
    // the key path of the complaint.
    let ticker = host.wait_until("ticker to fail", STATE_TIMEOUT, |h| {
        h.find_container("ticker")
            .filter(|c| c["state"] == "failed")
    });
    assert_eq!(ticker["plugin"], "ticker", "{ticker}");
    assert_eq!(
        ticker["restarts"], 0,
        "a refused config is not retried: {ticker}"
    );
    let error = ticker["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("containers.ticker.config") && error.contains("`path`"),
        "the plugin's complaint about `path` should show with its key: {ticker}"
    );
    let names: Vec<String> = host
        .containers()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["chaos", "web", "ticker"],
        "no default `http-echo` beside `web`"
    );
    // The file is fine: what is refused is the container's config, not the plugin.
    let plugin = host.plugin("libticker.so");
    assert_eq!(plugin["error_kind"], Value::Null, "{plugin}");

    host.signal(Signal::SIGINT);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT: {status}\n{}",
        host.logs()
    );
    let lines = host.lines();
    let web_stopped = stopped_index(&lines, "web");
    let chaos_stopped = stopped_index(&lines, "chaos");
    assert!(
        web_stopped.is_some() && chaos_stopped.is_some(),
        "missing `container stopped` lines\n{}",
        host.logs()
    );
    assert!(
        web_stopped < chaos_stopped,
        "web must stop before chaos\n{}",
        host.logs()
    );
}

/// The log contract: every line about a container carries `container=NAME` exactly as the
/// spec writes it (unquoted), whether the host or the plugin wrote it, so one grep finds a
/// container's whole story.
#[test]
fn log_lines_tag_containers_as_name_unquoted() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    dir.write_config(&format!(
        "[host]\nhealth_interval_ms = 100\n{}{}{}",
        echo_entry("web", "x"),
        chaos_entry("boom", "panic_in = \"start\""),
        chaos_entry("sick", "fail_health_after = 1"),
    ));
    let mut host = Host::start(&dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    host.wait_state("boom", "failed", STATE_TIMEOUT);
    host.wait_log("health check failed", STATE_TIMEOUT);
    host.echo_addr("web");
    host.signal(Signal::SIGTERM);
    host.wait_exit(EXIT_TIMEOUT);

    let lines = host.lines();
    let tagged = |what: &str, name: &str| {
        lines
            .iter()
            .filter(|l| l.contains(what) && has_field(l, "container", name))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut wrong = Vec::new();
    for (what, name) in [
        ("container running", "web"),
        ("container stopped", "web"),
        ("container failed", "boom"),
        ("health check failed", "sick"),
        ("listening", "web"),
    ] {
        let found = tagged(what, name);
        assert!(
            !found.is_empty(),
            "no {what:?} line for {name}\n{}",
            host.logs()
        );
        let exact = format!("container={name}");
        wrong.extend(
            found
                .into_iter()
                .filter(|l| {
                    !l.split_whitespace()
                        .any(|w| w == exact || w.ends_with(&format!("{{{exact}}}:")))
                })
                .map(|l| format!("{what:?}: {l}")),
        );
    }
    assert!(
        wrong.is_empty(),
        "lines that do not carry `container=NAME` unquoted:\n{}",
        wrong.join("\n")
    );
}
