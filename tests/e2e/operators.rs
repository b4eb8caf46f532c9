//! The operator's side: `balut status` with the plugin files that are not loaded and its
//! health, ready, restarts and uptime columns, `--watch` into a pipe, `balut logs` and
//! `GET /v1/containers/{name}/logs`, client commands against a closed pipe, a dead host
//! and bad answers, `/metrics`' per-container state, build info and uptime, and the JSON
//! key order and rounded durations of the API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balut_tests::{
    BalutProcess, Host, Lib, PluginDir, Put, STATE_TIMEOUT, build, lib_bytes, run_balut,
};
use serde_json::Value;

use crate::{chaos_entry, is_rfc3339, terminate, terminate_cleanly};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE: &str = "liveness = { period_ms = 100, grace_ms = 0 }\n";

fn wait_ready(host: &Host, name: &str) {
    host.wait_until(&format!("{name} running and ready"), STATE_TIMEOUT, |h| {
        h.find_container(name)
            .filter(|c| c["state"] == "running" && c["ready"] == true)
    });
}

/// The words of the table row whose first word is `first`.
fn row<'a>(stdout: &'a str, first: &str) -> Option<Vec<&'a str>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
}

fn no_panic(what: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{what} panicked: {stderr}"
    );
}

#[test]
fn status_lists_refused_files_exits_1_and_shows_health_ready_restarts_uptime() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!("{}{PROBE}", chaos_entry("a", "")));
    let host = Host::start(&dir);
    wait_ready(&host, "a");
    host.wait_until("a's first liveness result", STATE_TIMEOUT, |h| {
        h.find_container("a")
            .filter(|c| c["health"]["healthy"] == true)
    });
    let addr = host.addr().to_string();

    let out = run_balut(["status", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let header = row(&out.stdout, "NAME").unwrap_or_else(|| panic!("no header: {out:?}"));
    let a = row(&out.stdout, "a").unwrap_or_else(|| panic!("no row for a: {out:?}"));
    assert_eq!(header.len(), a.len(), "one word per cell: {out:?}");
    let cell = |name: &str| {
        let at = header.iter().position(|h| *h == name);
        at.map(|i| a[i])
            .unwrap_or_else(|| panic!("no {name} column: {out:?}"))
    };
    assert_eq!(cell("STATE"), "running");
    assert_eq!(cell("READY"), "yes");
    assert_eq!(cell("HEALTH"), "ok");
    assert_eq!(cell("RESTARTS"), "0");
    let uptime = cell("UPTIME");
    assert!(
        uptime.ends_with('s') && uptime.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "uptime {uptime:?}: {out:?}"
    );
    assert!(
        !out.stdout.contains("FILE"),
        "no file table when all are loaded: {out:?}"
    );

    // A refused file: listed with its reason, and the exit code says so.
    dir.put("broken.so", &lib_bytes(Lib::NoExport), Put::Rename);
    host.wait_plugin("broken.so", "refused", STATE_TIMEOUT, |p| {
        p["status"] == "error"
    });
    let out = run_balut(["status", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let broken = row(&out.stdout, "broken.so").unwrap_or_else(|| panic!("no file row: {out:?}"));
    assert_eq!(broken[1..3], ["refused", "missing_export"], "{out:?}");
    assert!(broken.len() > 3, "the reason is shown: {out:?}");
    assert_eq!(
        row(&out.stdout, "a").map(|w| w[4]),
        Some("running"),
        "{out:?}"
    );
    // --json carries the files too, and exits the same way.
    let out = run_balut(["status", "--addr", &addr, "--json"], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(json["containers"][0]["name"], "a", "{json}");
    assert!(
        json["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["file"] == "broken.so")),
        "{json}"
    );

    dir.remove("broken.so");
    host.wait_plugin_gone("broken.so", STATE_TIMEOUT);
    let out = run_balut(["status", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    terminate_cleanly(host);
}

/// The tables a `--watch` printed, each as its rows' words with the uptime cell blanked.
fn tables(lines: &[String]) -> Vec<Vec<Vec<String>>> {
    let mut tables: Vec<Vec<Vec<String>>> = Vec::new();
    for line in lines {
        let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if words.first().map(String::as_str) == Some("NAME") {
            tables.push(Vec::new());
        }
        if words.len() > 6 && words[0] != "NAME" {
            words[6] = "-".to_owned();
        }
        if let Some(table) = tables.last_mut().filter(|_| !words.is_empty()) {
            table.push(words);
        }
    }
    tables
}

#[test]
fn status_watch_into_a_pipe_prints_a_table_only_when_it_changed() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!("{}{}", chaos_entry("a", ""), chaos_entry("b", "")));
    let host = Host::start(&dir);
    wait_ready(&host, "a");
    wait_ready(&host, "b");
    let addr = host.addr().to_string();
    let mut watch = BalutProcess::spawn(["status", "--addr", &addr, "--watch"]);
    watch.wait_stdout("the first table", STATE_TIMEOUT, |l| {
        l.iter().any(|l| l.starts_with("b "))
    });
    // Each restart sends several events (states, readiness); the tables they lead to are
    // mostly the same.
    for _ in 0..3 {
        let (status, body) = host.post("/v1/containers/a/restart");
        assert_eq!(status, 200, "{body}");
        wait_ready(&host, "a");
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = watch.stdout();
    let tables = tables(&lines);
    assert!(tables.len() >= 2, "redrawn after the restarts: {lines:#?}");
    for pair in tables.windows(2) {
        assert_ne!(pair[0], pair[1], "a table printed twice: {lines:#?}");
    }
    let last = tables.last().cloned().unwrap_or_default();
    assert!(
        last.iter()
            .any(|w| w[0] == "a" && w.iter().any(|c| c == "running")),
        "{lines:#?}"
    );
    assert!(watch.is_running());
    drop(watch);
    terminate_cleanly(host);
}

#[test]
fn balut_logs_shows_and_follows_a_containers_own_lines() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    let config = |with_b: bool| {
        let mut config = chaos_entry("a", "");
        config.push_str(&chaos_entry("p", ""));
        config.push_str("isolation = \"process\"\n");
        if with_b {
            // Told apart from a's lines by its config, which its first line shows.
            config.push_str(&chaos_entry("b", "start_delay_ms = 1"));
        }
        config
    };
    dir.write_config(&config(true));
    let host = Host::start(&dir);
    for name in ["a", "p", "b"] {
        wait_ready(&host, name);
    }
    let addr = host.addr().to_string();

    // The API: JSON lines, keys in order, the last n.
    let (status, content_type, text) = host.get_text("/v1/containers/a/logs");
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/x-ndjson"),
        "{content_type}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            assert!(l.starts_with("{\"at\":"), "keys in order: {l}");
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
        })
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(
        messages.contains(&"created") && messages.contains(&"started, idling"),
        "{text}"
    );
    let created = lines.iter().find(|l| l["message"] == "created");
    assert!(
        created.is_some_and(|l| l["level"] == "info" && l["fields"]["config"].is_string()),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["at"].as_str().is_some_and(is_rfc3339))
    );
    let (status, _, text) = host.get_text("/v1/containers/a/logs?n=1");
    assert_eq!((status, text.lines().count()), (200, 1), "{text}");
    let (status, body) = host.get("/v1/containers/nope/logs");
    assert_eq!(status, 404, "{body}");

    // The CLI: one readable line each; only this container's lines.
    let out = run_balut(["logs", "a", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert!(
        printed.iter().any(|l| l.contains(" INFO started, idling")),
        "{out:?}"
    );
    assert!(
        printed
            .iter()
            .all(|l| l.split_whitespace().next().is_some_and(is_rfc3339)),
        "{out:?}"
    );
    let out = run_balut(["logs", "a", "--addr", &addr, "-n", "1"], CLI_TIMEOUT);
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    // An isolated container's lines come from its process.
    let out = run_balut(["logs", "p", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("started, idling"), "{out:?}");
    let out = run_balut(["logs", "nope", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no container named `nope`"), "{out:?}");
    no_panic("balut logs nope", &out.stderr);

    // Following: a restart's lines come as they are logged.
    let mut follow = BalutProcess::spawn(["logs", "a", "-f", "-n", "0", "--addr", &addr]);
    let mut follow_p = BalutProcess::spawn(["logs", "p", "-f", "-n", "0", "--addr", &addr]);
    let mut follow_b = BalutProcess::spawn(["logs", "b", "--follow", "--addr", &addr]);
    follow_b.wait_stdout("b's kept lines", STATE_TIMEOUT, |l| {
        l.iter().any(|l| l.contains("started, idling"))
    });
    for name in ["a", "p"] {
        let (status, body) = host.post(&format!("/v1/containers/{name}/restart"));
        assert_eq!(status, 200, "{body}");
    }
    for (follower, name) in [(&mut follow, "a"), (&mut follow_p, "p")] {
        let lines = follower.wait_stdout(&format!("{name}'s restart"), STATE_TIMEOUT, |l| {
            l.iter().any(|l| l.contains(" INFO stopped"))
                && l.iter().any(|l| l.contains(" INFO started, idling"))
        });
        assert!(
            !lines.iter().any(|l| l.contains("start_delay_ms: Some(1)")),
            "b's lines in {name}'s: {lines:#?}"
        );
    }
    let (_, _, text) = host.get_text("/v1/containers/a/logs");
    assert!(!text.contains("start_delay_ms: Some(1)"), "{text}");
    let (_, _, text) = host.get_text("/v1/containers/b/logs");
    assert!(text.contains("start_delay_ms: Some(1)"), "{text}");

    // A removed container: its lines go, its followers end with the reason.
    dir.write_config(&config(false));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 200, "{body}");
    host.wait_for("b deregistered", STATE_TIMEOUT, |h| {
        h.find_container("b").is_none()
    });
    let (status, body) = host.get("/v1/containers/b/logs");
    assert_eq!(status, 404, "{body}");
    let deadline = Instant::now() + STATE_TIMEOUT;
    while follow_b.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!follow_b.is_running(), "the follower of b still runs");
    let stderr = follow_b.stderr().join("\n");
    assert!(stderr.contains("no container named `b`"), "{stderr}");
    no_panic("balut logs b -f", &stderr);

    // The host goes: the followers end with a clear error.
    let mut host = host;
    assert_eq!(terminate(&mut host), 0, "{}", host.logs());
    let deadline = Instant::now() + STATE_TIMEOUT;
    while follow.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!follow.is_running(), "the follower outlived the host");
    let stderr = follow.stderr().join("\n");
    assert!(
        stderr.contains("no balut host") || stderr.contains("the host ended the stream"),
        "{stderr}"
    );
    no_panic("balut logs -f", &stderr);
}

/// Runs `balut ARGS` with stdout into a pipe, reads one line, closes the pipe, then calls
/// `more` (which makes the command write again): it must end by itself, with code 0 and
/// no panic.
fn ends_quietly_on_a_closed_pipe(args: &[&str], more: impl FnOnce()) {
    let mut child = Command::new(&build().balut)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn balut {args:?}: {e}"));
    let stdout = child.stdout.take().expect("piped");
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first).expect("read a line");
    assert!(!first.is_empty(), "balut {args:?} printed nothing");
    drop(reader);
    more();
    let deadline = Instant::now() + STATE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("balut {args:?} did not end after its reader went");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(0), "balut {args:?}: {status}: {stderr}");
    no_panic(&format!("balut {args:?}"), &stderr);
    assert!(stderr.trim().is_empty(), "balut {args:?} said: {stderr}");
}

/// A fake "host" answering every request by its path, for as long as the test runs.
fn fake_host(answer: fn(&str) -> (&'static str, String)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(n) if n > 2 => {}
                    _ => break,
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (content_type, body) = answer(&path);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn client_commands_survive_a_closed_pipe_a_dead_host_and_bad_answers() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&chaos_entry("a", ""));
    let mut host = Host::start(&dir);
    wait_ready(&host, "a");
    let addr = host.addr().to_string();
    let restart = || {
        let (status, body) = host.post("/v1/containers/a/restart");
        assert_eq!(status, 200, "{body}");
    };
    // `balut events | head -1`, `balut logs -f | head -1`.
    ends_quietly_on_a_closed_pipe(&["events", "--addr", &addr, "--since", "0"], restart);
    ends_quietly_on_a_closed_pipe(&["logs", "a", "-f", "--addr", &addr], restart);
    ends_quietly_on_a_closed_pipe(&["status", "--addr", &addr, "--watch"], restart);

    // A dead host.
    assert_eq!(terminate(&mut host), 0, "{}", host.logs());
    for args in [
        &["status"][..],
        &["status", "--watch"],
        &["events"],
        &["logs", "a"],
        &["logs", "a", "-f"],
        &["ctl", "restart", "a"],
    ] {
        let out = run_balut([args, &["--addr", &addr]].concat(), CLI_TIMEOUT);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains("no balut host"), "{args:?}: {out:?}");
        no_panic(&format!("{args:?}"), &out.stderr);
    }

    // Something that is not a balut host: not JSON.
    let text = fake_host(|_| ("text/plain", "hello".to_owned()));
    // A JSON answer of the wrong shape.
    let shape = fake_host(|path| {
        if path.starts_with("/v1/events") {
            ("text/event-stream", "id: 1\ndata: [1, 2]\n\n".to_owned())
        } else if path.contains("/logs") {
            ("application/x-ndjson", "[1]\n".to_owned())
        } else {
            (
                "application/json",
                "{\"containers\": 5, \"name\": 7}".to_owned(),
            )
        }
    });
    for (addr, expected) in [
        (&text, "did not answer with"),
        (&shape, "unexpected answer"),
    ] {
        for args in [
            &["status"][..],
            &["status", "--json"],
            &["status", "--watch"],
            &["events"],
            &["logs", "a"],
            &["ctl", "stop", "a"],
        ] {
            let out = run_balut([args, &["--addr", addr]].concat(), CLI_TIMEOUT);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            let said = &out.stderr;
            assert!(
                said.contains(expected) || said.contains("malformed"),
                "{args:?} against {addr}: {out:?}"
            );
            no_panic(&format!("{args:?}"), said);
        }
    }
}

/// The value of the sample line that starts with `prefix ` in `text`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_show_each_containers_state_the_build_and_the_uptime() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "{}{}",
        chaos_entry("a", ""),
        chaos_entry("b", "fail_start = true")
    ));
    let host = Host::start(&dir);
    wait_ready(&host, "a");
    host.wait_state("b", "failed", STATE_TIMEOUT);
    let (status, _, text) = host.get_text("/metrics");
    assert_eq!(status, 200, "{text}");
    let state = |c: &str, s: &str| {
        sample(
            &text,
            &format!("balut_container_state{{container=\"{c}\",state=\"{s}\"}}"),
        )
    };
    assert_eq!(state("a", "running"), Some(1.0), "{text}");
    assert_eq!(state("b", "failed"), Some(1.0), "{text}");
    assert_eq!(state("a", "failed"), None, "{text}");
    let build = text
        .lines()
        .find(|l| l.starts_with("balut_build_info{"))
        .unwrap_or_else(|| panic!("no build info:\n{text}"));
    assert!(build.ends_with("} 1"), "{build}");
    assert!(
        build.contains("version=\"") && build.contains("interface=\"1."),
        "{build}"
    );
    let uptime = sample(&text, "balut_uptime_seconds").unwrap_or_else(|| panic!("{text}"));
    let started = sample(&text, "balut_start_time_seconds").unwrap_or_else(|| panic!("{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    assert!(uptime > 0.0 && uptime < 600.0, "{uptime}");
    assert!(
        (now - started - uptime).abs() < 5.0,
        "{now} {started} {uptime}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let (_, _, later) = host.get_text("/metrics");
    let later = sample(&later, "balut_uptime_seconds").unwrap_or_default();
    assert!(later > uptime, "{later} after {uptime}");
    // Stopped on purpose: its gauge moves to `stopped`.
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    let (_, _, text) = host.get_text("/metrics");
    assert_eq!(
        sample(
            &text,
            "balut_container_state{container=\"a\",state=\"stopped\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "balut_container_state{container=\"a\",state=\"running\"}"
        ),
        None,
        "{text}"
    );
    terminate_cleanly(host);
}

/// Whether the `"key":` of each of `keys` first appears in `text` in that order.
fn in_order(text: &str, keys: &[&str]) -> bool {
    let at: Vec<Option<usize>> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")))
        .collect();
    at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn json_keys_come_in_the_documented_order_and_durations_in_microseconds() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!("{}{PROBE}", chaos_entry("a", "")));
    let host = Host::start(&dir);
    wait_ready(&host, "a");
    host.wait_until("a few probe results", STATE_TIMEOUT, |h| {
        h.get_json("/v1/containers/a")["probes"]
            .as_array()
            .filter(|p| p.len() >= 5)
            .cloned()
    });
    let documented = [
        "name",
        "plugin",
        "version",
        "state",
        "since",
        "last_error",
        "generation",
        "file",
        "loaded_at",
        "sha256",
        "health",
        "ready",
        "restarts",
        "next_retry",
        "requires",
        "isolation",
        "process",
        "probes",
        "history",
    ];
    let (status, _, one) = host.get_text("/v1/containers/a");
    assert_eq!(status, 200, "{one}");
    assert!(one.starts_with("{\"name\":"), "{one}");
    assert!(in_order(&one, &documented), "keys out of order: {one}");
    let (_, _, list) = host.get_text("/v1/containers");
    assert!(in_order(&list, &documented[..17]), "{list}");
    let (_, _, plugins) = host.get_text("/v1/plugins");
    assert!(
        in_order(
            &plugins,
            &[
                "plugins",
                "file",
                "status",
                "error",
                "not_unloaded",
                "folder"
            ]
        ),
        "{plugins}"
    );
    // The CLI's JSON goes through a JSON value: still in order.
    let addr = host.addr().to_string();
    let out = run_balut(["status", "--addr", &addr, "--json"], CLI_TIMEOUT);
    assert!(
        in_order(
            &out.stdout,
            &[
                "containers",
                "name",
                "plugin",
                "state",
                "since",
                "plugins",
                "folder"
            ]
        ),
        "{out:?}"
    );

    // Every duration_ms has at most three decimals (whole microseconds).
    let mut seen = 0;
    for piece in one.split("\"duration_ms\":").skip(1) {
        let number: String = piece
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            .collect();
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3 && !number.contains(['e', 'E']),
            "duration_ms {number} is not in whole microseconds: {one}"
        );
        seen += 1;
    }
    assert!(seen >= 5, "{one}");
    terminate_cleanly(host);
}
