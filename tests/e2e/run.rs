//! `balut run` with the three example plugins: start, serve, stop on a signal.

use std::time::Duration;

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, has_field, http_get};

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
        assert_eq!(p["interface_version"], "1.0", "{p}");
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
fn sigint_stops_default_instances_cleanly() {
    // No config: one container per plugin, named after the plugin.
    let dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    let mut host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    let echo = host.wait_state("http-echo", "running", STATE_TIMEOUT);
    assert_eq!(echo["plugin"], "http-echo");
    let names: Vec<String> = host
        .containers()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["chaos", "http-echo"]);

    host.signal(Signal::SIGINT);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT: {status}\n{}",
        host.logs()
    );
    let lines = host.lines();
    let echo_stopped = stopped_index(&lines, "http-echo");
    let chaos_stopped = stopped_index(&lines, "chaos");
    assert!(
        echo_stopped.is_some() && chaos_stopped.is_some(),
        "missing `container stopped` lines\n{}",
        host.logs()
    );
    assert!(
        echo_stopped < chaos_stopped,
        "http-echo must stop before chaos\n{}",
        host.logs()
    );
}
