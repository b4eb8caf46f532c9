//! Stopping every container of a library unloads it; starting one loads the file anew.

use std::net::SocketAddr;

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, field_values, has_field, http_get,
};

use crate::{echo_entry, tick_lines, ticker_entry};

/// Every `addr=` an http-echo container logged with `listening`.
fn echo_addrs(host: &Host, container: &str) -> Vec<SocketAddr> {
    host.lines()
        .iter()
        .filter(|l| l.contains("listening") && !l.contains("http api listening"))
        .filter(|l| has_field(l, "container", container))
        .filter_map(|l| field_values(l, "addr").first().and_then(|a| a.parse().ok()))
        .collect()
}

/// The lines of /proc/<pid>/maps that map a private copy of `stem`.
fn mapped_copies(host: &Host, stem: &str) -> Vec<String> {
    let needle = format!("{stem}-g");
    host.maps()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn stopping_the_last_container_unloads_the_library() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Ticker]);
    let ticks = dir.path().join("ticks.log");
    dir.write_config(&format!(
        "{}{}",
        echo_entry("http-echo", "round one"),
        ticker_entry("ticker", &ticks, 50)
    ));
    let mut host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    host.wait_state("ticker", "running", STATE_TIMEOUT);

    let echo_maps = mapped_copies(&host, "libhttp_echo");
    assert!(
        !echo_maps.is_empty(),
        "no private copy of libhttp_echo.so mapped:\n{}",
        host.maps()
    );
    assert!(
        echo_maps.iter().all(|l| l.contains("libhttp_echo-g1")),
        "generation 1 copy expected: {echo_maps:?}"
    );
    assert!(
        !host
            .maps()
            .contains(&dir.plugins().join("libhttp_echo.so").display().to_string()),
        "the host mapped the plugin folder's file instead of a private copy"
    );
    assert!(
        !mapped_copies(&host, "libticker").is_empty(),
        "ticker's copy is not mapped"
    );
    let first = host.echo_addr("http-echo");
    assert_eq!(http_get(first, "/").0, 200);

    let (status, body) = host.post("/v1/containers/http-echo/stop");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "http-echo", "{body}");
    let stopped = host.wait_state("http-echo", "stopped", STATE_TIMEOUT);
    assert!(stopped["last_error"].is_null(), "{stopped}");

    let unloaded = host.wait_log_where(
        "a `library unloaded ... mapped=false` line for libhttp_echo",
        STATE_TIMEOUT,
        |l| {
            l.contains("library unloaded")
                && l.contains("libhttp_echo")
                && has_field(l, "mapped", "false")
        },
    );
    assert!(!unloaded.contains("mapped=true"), "{unloaded}");
    let unloaded_plugin = host.plugin("libhttp_echo.so");
    assert_ne!(unloaded_plugin["status"], "error", "{unloaded_plugin}");
    assert!(unloaded_plugin["error_kind"].is_null(), "{unloaded_plugin}");
    let left = mapped_copies(&host, "libhttp_echo");
    assert!(
        left.is_empty(),
        "libhttp_echo is still mapped after unloading: {left:?}"
    );
    // Its port is closed.
    assert!(
        std::net::TcpStream::connect(first).is_err(),
        "http-echo still accepts on {first}"
    );

    // The other library is untouched.
    assert_eq!(host.state("ticker"), "running");
    assert!(
        !mapped_copies(&host, "libticker").is_empty(),
        "ticker's copy went away too"
    );
    let seen = tick_lines(&ticks);
    host.wait_for("ticker to keep ticking", STATE_TIMEOUT, |_| {
        tick_lines(&ticks) > seen
    });

    // Start again: a fresh load of the file, generation 2.
    let (status, body) = host.post("/v1/containers/http-echo/start");
    assert_eq!(status, 200, "{body}");
    let again = host.wait_state("http-echo", "running", STATE_TIMEOUT);
    assert_eq!(again["generation"], 2, "{again}");
    let maps = mapped_copies(&host, "libhttp_echo");
    assert!(
        !maps.is_empty() && maps.iter().all(|l| l.contains("libhttp_echo-g2")),
        "generation 2 copy expected: {maps:?}"
    );
    let plugin = host.plugin("libhttp_echo.so");
    assert_eq!(plugin["generation"], 2, "{plugin}");
    let addrs = host.wait_until("http-echo to listen again", STATE_TIMEOUT, |h| {
        let addrs = echo_addrs(h, "http-echo");
        (addrs.len() >= 2).then_some(addrs)
    });
    let (status, body) = http_get(addrs[addrs.len() - 1], "/");
    assert_eq!(status, 200);
    assert!(body.contains("round one"), "{body:?}");

    host.signal(Signal::SIGTERM);
    assert_eq!(
        host.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
}

#[test]
fn library_stays_loaded_while_one_of_its_containers_runs() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}{}",
        echo_entry("echo-a", "a"),
        echo_entry("echo-b", "b")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("echo-a", "running", STATE_TIMEOUT);
    host.wait_state("echo-b", "running", STATE_TIMEOUT);

    assert_eq!(host.post("/v1/containers/echo-a/stop").0, 200);
    host.wait_state("echo-a", "stopped", STATE_TIMEOUT);
    assert!(
        !mapped_copies(&host, "libhttp_echo").is_empty(),
        "unloaded while echo-b runs"
    );
    assert!(
        host.lines_with(&["library unloaded"]).is_empty(),
        "{}",
        host.logs()
    );
    assert_eq!(http_get(host.echo_addr("echo-b"), "/").0, 200);

    assert_eq!(host.post("/v1/containers/echo-b/stop").0, 200);
    host.wait_state("echo-b", "stopped", STATE_TIMEOUT);
    host.wait_log("library unloaded", STATE_TIMEOUT);
    assert!(
        mapped_copies(&host, "libhttp_echo").is_empty(),
        "{}",
        host.maps()
    );

    host.signal(Signal::SIGTERM);
    assert_eq!(
        host.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
}
