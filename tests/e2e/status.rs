//! `balut status`: the CLI view of a running host.

use std::time::Duration;

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, run_balut};
use serde_json::Value;

use crate::{echo_entry, ticker_entry};

#[test]
fn status_prints_the_containers_of_a_running_host() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Ticker]);
    let ticks = dir.path().join("ticks.log");
    dir.write_config(&format!(
        "{}{}",
        echo_entry("web", "x"),
        ticker_entry("clock", &ticks, 100)
    ));
    let mut host = Host::start(&dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    host.wait_state("clock", "running", STATE_TIMEOUT);
    let addr = host.addr().to_string();

    let out = run_balut(["status", "--addr", &addr], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let header = lines.first().copied().unwrap_or_default();
    assert!(
        header.contains("NAME") && header.contains("STATE"),
        "no table header: {:?}",
        out.stdout
    );
    for (name, plugin) in [("web", "http-echo"), ("clock", "ticker")] {
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {:?}", out.stdout));
        assert!(row.contains("running"), "{row}");
        assert!(row.contains(plugin), "{row}");
    }
    let web_row = lines.iter().position(|l| l.starts_with("web"));
    let clock_row = lines.iter().position(|l| l.starts_with("clock"));
    assert!(
        web_row < clock_row,
        "rows in registration order: {:?}",
        out.stdout
    );

    let out = run_balut(
        ["status", "--addr", &addr, "--json"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout));
    let names: Vec<&str> = json["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers array: {json}"))
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "clock"], "{json}");
    assert_eq!(json["containers"][0]["state"], "running");

    host.signal(Signal::SIGTERM);
    assert_eq!(
        host.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
}

#[test]
fn status_without_a_host_says_so() {
    // A port that was free a moment ago and has nothing listening now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = run_balut(["status", "--addr", &addr], Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.status.code().is_some(),
        "status died of a signal: {out:?}"
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("no balut host"), "{text:?}");
    assert!(
        text.contains(&addr),
        "the message should name {addr}: {text:?}"
    );
}
