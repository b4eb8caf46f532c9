//! Controlling a host: the bearer token on mutating requests, config reload (SIGHUP,
//! `POST /v1/reload`, `balut ctl reload`) refused when bad and applied as a diff when good,
//! and `balut ctl` with its exit codes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use balut_tests::{
    Finished, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, run_balut, run_balut_with,
};
use serde_json::{Value, json};

use crate::{chaos_entry, terminate_cleanly};

pub(crate) const TOKEN: &str = "e2e-s3cret-token";
pub(crate) const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A folder with the chaos library, a config of never-restarted chaos containers and a
/// token file (`TOKEN` plus a newline, mode 0600).
pub(crate) fn setup(config: &str) -> (PluginDir, PathBuf) {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(config);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
    balut_tests::set_mode(&token_file, 0o600);
    (dir, token_file)
}

pub(crate) fn with_args(dir: &PluginDir, extra: &[&OsString]) -> Vec<OsString> {
    let mut args = dir.run_args();
    args.extend(extra.iter().map(|a| (*a).clone()));
    args
}

/// Waits until container `name` is running and ready; returns its one-container view
/// (with `history`).
pub(crate) fn wait_ready(host: &Host, name: &str) -> Value {
    host.wait_until(
        &format!("container {name:?} to be running and ready"),
        STATE_TIMEOUT,
        |h| {
            h.find_container(name)
                .filter(|c| c["state"] == "running" && c["ready"] == true)
        },
    );
    detail(host, name)
}

/// `GET /v1/containers/{name}`: the one-container view, with `history`.
pub(crate) fn detail(host: &Host, name: &str) -> Value {
    host.get_json(&format!("/v1/containers/{name}"))
}

pub(crate) fn history_len(c: &Value) -> usize {
    c["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history: {c}"))
        .len()
}

/// Whether a log line begins a new record (`2026-01-01T...`).
fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 11 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

pub(crate) fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[test]
fn mutating_requests_need_the_bearer_token() {
    let (dir, token_file) = setup(&format!("{}{}", chaos_entry("a", ""), chaos_entry("b", "")));
    let args = with_args(&dir, &[&"--token-file".into(), &token_file.clone().into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    let a = wait_ready(&host, "a");
    wait_ready(&host, "b");

    for path in [
        "/v1/containers/a/stop",
        "/v1/containers/a/start",
        "/v1/containers/a/restart",
        "/v1/reload",
    ] {
        let mark = host.mark();
        let (status, body) = host.post(path);
        assert_eq!(status, 401, "POST {path} without a token: {body}");
        assert_eq!(
            body,
            json!({"error": "missing bearer token"}),
            "POST {path}"
        );
        let (status, body) = host.post_with_token(path, "not-the-token");
        assert_eq!(status, 401, "POST {path} with a wrong token: {body}");
        assert_eq!(body, json!({"error": "wrong bearer token"}), "POST {path}");
        // A prefix of the right token, and the right one without "Bearer ", are wrong too.
        let (status, _) = host.post_with_token(path, &TOKEN[..TOKEN.len() - 1]);
        assert_eq!(status, 401, "POST {path} with a prefix of the token");
        let (status, _) = host.post_with_auth(path, Some(TOKEN));
        assert_eq!(status, 401, "POST {path} with the token but no Bearer");
        host.wait_for("the refusals in the log", STATE_TIMEOUT, |h| {
            h.lines_since(mark)
                .iter()
                .filter(|l| l.contains("refused an API request"))
                .count()
                >= 4
        });
    }
    // Nothing happened to a.
    let now = detail(&host, "a");
    assert_eq!(now["state"], "running", "{now}");
    assert_eq!(now["since"], a["since"], "{now}");
    assert_eq!(history_len(&now), history_len(&a), "{now}");

    // Reads need no token.
    for path in [
        "/v1/containers",
        "/v1/containers/a",
        "/v1/plugins",
        "/healthz",
        "/readyz",
    ] {
        let (status, body) = host.get(path);
        assert_eq!(status, 200, "GET {path} without a token: {body}");
    }
    drop(host.events_at("/v1/events?since=0"));

    // The right token works.
    let (status, body) = host.post_with_token("/v1/containers/a/stop", TOKEN);
    assert_eq!((status, &body["state"]), (200, &json!("stopped")), "{body}");
    let (status, body) = host.post_with_token("/v1/containers/a/start", TOKEN);
    assert_eq!((status, &body["state"]), (200, &json!("running")), "{body}");
    let (status, body) = host.post_with_token("/v1/reload", TOKEN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unchanged"], json!(["a", "b"]), "{body}");
    terminate_cleanly(host);
}

#[test]
fn the_token_can_come_from_balut_token() {
    let (dir, _) = setup(&chaos_entry("a", ""));
    let host = Host::spawn_with(dir.run_args(), Some(dir.tmp()), &[("BALUT_TOKEN", TOKEN)]);
    wait_ready(&host, "a");
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!((status, error_of(&body)), (401, "missing bearer token"));
    let (status, body) = host.post_with_token("/v1/containers/a/stop", "nope");
    assert_eq!((status, error_of(&body)), (401, "wrong bearer token"));
    let (status, body) = host.post_with_token("/v1/containers/a/stop", TOKEN);
    assert_eq!((status, &body["state"]), (200, &json!("stopped")), "{body}");
    terminate_cleanly(host);
}

#[test]
fn the_bearer_scheme_is_matched_in_any_case() {
    let (dir, token_file) = setup(&chaos_entry("a", ""));
    let args = with_args(&dir, &[&"--token-file".into(), &token_file.into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    for (i, scheme) in ["bearer", "BEARER", "Bearer", "bEaReR"].iter().enumerate() {
        let action = if i % 2 == 0 { "stop" } else { "start" };
        let path = format!("/v1/containers/a/{action}");
        let (status, body) = host.post_with_auth(&path, Some(&format!("{scheme} {TOKEN}")));
        assert_eq!(status, 200, "POST {path} with `{scheme} TOKEN`: {body}");
    }
    // Any number of spaces after the scheme (RFC 7235: 1*SP); another scheme is refused.
    let (status, body) =
        host.post_with_auth("/v1/containers/a/stop", Some(&format!("bearer   {TOKEN}")));
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        host.post_with_auth("/v1/containers/a/start", Some(&format!("Basic {TOKEN}")));
    assert_eq!(
        (status, error_of(&body)),
        (401, "missing bearer token"),
        "{body}"
    );
    terminate_cleanly(host);
}

#[test]
fn a_token_file_its_group_or_others_can_read_is_refused() {
    let (dir, token_file) = setup(&chaos_entry("a", ""));
    let file = token_file.to_str().expect("a UTF-8 path").to_owned();
    for mode in [0o644, 0o640, 0o604] {
        balut_tests::set_mode(&token_file, mode);
        let mut args = dir.run_args();
        args.extend(["--listen".into(), "0.0.0.0:0".into()]);
        args.extend(["--token-file".into(), token_file.clone().into()]);
        let out = run_balut(&args, CLI_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "mode {mode:o}: {out:?}");
        let says = |text: &str| out.stderr.contains(text);
        assert!(
            says(&file) && says(&format!("mode {mode:04o}")) && says("chmod 600"),
            "the refusal names the file, its mode and the fix: {out:?}"
        );
        // The client commands refuse it too.
        let out = run_balut(
            [
                "ctl",
                "stop",
                "a",
                "--addr",
                "127.0.0.1:9",
                "--token-file",
                &file,
            ],
            CLI_TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("chmod 600"), "{out:?}");
    }
    // Owner-only, it is fine.
    balut_tests::set_mode(&token_file, 0o400);
    let args = with_args(&dir, &[&"--token-file".into(), &token_file.into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    terminate_cleanly(host);
}

#[test]
fn a_short_token_is_accepted_with_a_warning() {
    let (dir, token_file) = setup(&chaos_entry("a", ""));
    // TOKEN is 16 bytes: long enough, no warning.
    let args = with_args(&dir, &[&"--token-file".into(), &token_file.clone().into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    assert!(
        host.lines_with(&["shorter than 16 bytes"]).is_empty(),
        "{}",
        host.logs()
    );
    terminate_cleanly(host);

    std::fs::write(&token_file, "x\n").expect("write a short token");
    let mut args = dir.run_args();
    args.extend(["--listen".into(), "0.0.0.0:0".into()]);
    args.extend(["--token-file".into(), token_file.clone().into()]);
    let host = Host::spawn_with(args.clone(), Some(dir.tmp()), &[]);
    let line = host.wait_log("shorter than 16 bytes", STATE_TIMEOUT);
    assert!(line.contains("WARN") && line.contains("bytes=1"), "{line}");
    assert!(
        line.contains(token_file.to_str().expect("UTF-8")),
        "names the file: {line}"
    );
    wait_ready(&host, "a");
    let (status, body) = host.post_with_token("/v1/containers/a/stop", "x");
    assert_eq!(status, 200, "a short token still works: {body}");
    terminate_cleanly(host);

    // From the environment the same.
    let mut args = dir.run_args();
    args.extend(["--listen".into(), "0.0.0.0:0".into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[("BALUT_TOKEN", "short")]);
    let line = host.wait_log("shorter than 16 bytes", STATE_TIMEOUT);
    assert!(
        line.contains("BALUT_TOKEN") && line.contains("bytes=5"),
        "{line}"
    );
    terminate_cleanly(host);
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let (dir, token_file) = setup(&chaos_entry("a", ""));
    let mut args = dir.run_args();
    args.extend(["--listen".into(), "0.0.0.0:0".into()]);
    let out = run_balut(&args, CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("token"),
        "the refusal says a token is needed: {out:?}"
    );
    assert!(
        out.stderr.contains("0.0.0.0"),
        "and names the address: {out:?}"
    );

    // An empty BALUT_TOKEN is no token.
    let out = run_balut_with(&args, &[("BALUT_TOKEN", "")], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // With a token it runs, warns, and still guards mutations.
    args.extend(["--token-file".into(), token_file.into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    assert!(host.addr().ip().is_unspecified(), "{}", host.addr());
    host.wait_log("beyond loopback", STATE_TIMEOUT);
    wait_ready(&host, "a");
    let (status, _) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 401);
    let (status, body) = host.post_with_token("/v1/containers/a/stop", TOKEN);
    assert_eq!(status, 200, "{body}");
    terminate_cleanly(host);
}

#[test]
fn a_bad_config_on_sighup_or_reload_is_refused_and_the_old_stays() {
    let good = format!("{}{}", chaos_entry("a", ""), chaos_entry("b", ""));
    let (mut dir, _) = setup(&good);
    let host = Host::start(&dir);
    let a = wait_ready(&host, "a");
    let b = wait_ready(&host, "b");

    // Not TOML at all.
    dir.write_config("[containers.a\nplugin = \"chaos\"\n");
    let mark = host.mark();
    host.signal(Signal::SIGHUP);
    // The parse error spans several lines (a TOML snippet with a caret), so the record is
    // the `config reload refused` line and the lines up to the next timestamped one.
    let record = host.wait_until(
        "the whole `config reload refused` record",
        STATE_TIMEOUT,
        |h| {
            let lines = h.lines_since(mark);
            let start = lines
                .iter()
                .position(|l| l.contains("config reload refused"))?;
            let record: Vec<&str> = std::iter::once(lines[start].as_str())
                .chain(
                    lines[start + 1..]
                        .iter()
                        .map(String::as_str)
                        .take_while(|l| !starts_with_timestamp(l)),
                )
                .collect();
            let record = record.join("\n");
            record
                .contains("the old config stays in force")
                .then_some(record)
        },
    );
    assert!(
        record.contains("balut.toml"),
        "the record names the file: {record}"
    );
    assert!(
        record.contains("TOML parse error"),
        "and the parse error: {record}"
    );

    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 400, "{body}");
    let error = error_of(&body);
    assert!(error.contains("the old config stays in force"), "{body}");
    assert!(
        error.to_lowercase().contains("toml") || error.contains("line"),
        "the parse error: {body}"
    );

    // Valid TOML, invalid config: a requirement that is not declared.
    dir.write_config(&format!("{good}requires = [\"nope\"]\n"));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("nope"), "{body}");
    assert!(
        error_of(&body).contains("the old config stays in force"),
        "{body}"
    );

    // Nothing changed.
    for (name, before) in [("a", &a), ("b", &b)] {
        let now = detail(&host, name);
        assert_eq!(now["state"], "running", "{now}");
        assert_eq!(
            now["since"], before["since"],
            "{name} was not touched: {now}"
        );
        assert_eq!(history_len(&now), history_len(before), "{now}");
    }
    assert!(
        host.lines_since(mark)
            .iter()
            .all(|l| !l.contains("container stopping")),
        "no container stopped"
    );

    // The same good file again: everything unchanged.
    dir.write_config(&good);
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"added": [], "removed": [], "changed": [], "unchanged": ["a", "b"], "needs_restart": []})
    );
    terminate_cleanly(host);
}

#[test]
fn a_good_reload_restarts_only_what_changed() {
    let old = format!(
        "{}{}{}",
        chaos_entry("keep", ""),
        chaos_entry("change", "start_delay_ms = 10"),
        chaos_entry("gone", ""),
    );
    let (mut dir, _) = setup(&old);
    let host = Host::start(&dir);
    let keep = wait_ready(&host, "keep");
    let change = wait_ready(&host, "change");
    wait_ready(&host, "gone");
    let stream = host.events(None);

    dir.write_config(&format!(
        "{}{}{}",
        chaos_entry("keep", ""),
        chaos_entry("change", "start_delay_ms = 20"),
        chaos_entry("fresh", ""),
    ));
    let (status, body) = host.post("/v1/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"added": ["fresh"], "removed": ["gone"], "changed": ["change"],
               "unchanged": ["keep"], "needs_restart": []})
    );
    host.wait_log("config reloaded", STATE_TIMEOUT);

    let change_now = wait_ready(&host, "change");
    wait_ready(&host, "fresh");
    host.wait_until("gone to disappear", STATE_TIMEOUT, |h| {
        h.find_container("gone").is_none().then_some(())
    });
    let (status, body) = host.get("/v1/containers/gone");
    assert_eq!(status, 404, "{body}");

    let keep_now = detail(&host, "keep");
    assert_eq!(keep_now["state"], "running", "{keep_now}");
    assert_eq!(
        keep_now["since"], keep["since"],
        "keep was not touched: {keep_now}"
    );
    assert_eq!(
        keep_now["history"], keep["history"],
        "keep has no new transition"
    );
    assert_ne!(
        change_now["since"], change["since"],
        "change was restarted: {change_now}"
    );
    let last = change_now["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&last["from"], &last["to"]),
        (&json!("starting"), &json!("running")),
        "change's newest transition: {change_now}"
    );

    let got = stream.drain(Duration::from_millis(500));
    let of = |name: &str| -> Vec<String> {
        got.iter()
            .filter(|e| e.is_state_of(name))
            .map(|e| e.transition().1)
            .collect()
    };
    assert!(of("keep").is_empty(), "no event for keep: {got:#?}");
    assert_eq!(
        of("change"),
        ["stopping", "stopped", "starting", "running"],
        "{got:#?}"
    );
    assert_eq!(of("gone"), ["stopping", "stopped"], "{got:#?}");
    assert_eq!(
        of("fresh").last().map(String::as_str),
        Some("running"),
        "{got:#?}"
    );
    assert!(of("fresh").contains(&"starting".to_owned()), "{got:#?}");

    // SIGHUP applies a diff the same way.
    let keep = detail(&host, "keep");
    let change = detail(&host, "change");
    dir.write_config(&format!(
        "{}{}{}",
        chaos_entry("keep", ""),
        chaos_entry("change", "start_delay_ms = 30"),
        chaos_entry("fresh", ""),
    ));
    let mark = host.mark();
    host.signal(Signal::SIGHUP);
    let line = host.wait_until("a second `config reloaded`", STATE_TIMEOUT, |h| {
        h.lines_since(mark)
            .into_iter()
            .find(|l| l.contains("config reloaded"))
    });
    assert!(
        line.contains("change"),
        "the log lists what changed: {line}"
    );
    let change_now = wait_ready(&host, "change");
    assert_ne!(change_now["since"], change["since"], "{change_now}");
    let keep_now = detail(&host, "keep");
    assert_eq!(keep_now["since"], keep["since"], "{keep_now}");
    assert_eq!(keep_now["history"], keep["history"], "{keep_now}");
    drop(stream);
    terminate_cleanly(host);
}

/// `balut ctl` through `ctl` (which adds where the host is and how to get in) on a host
/// whose containers `a` and `b` run: stop and start `a`, restart `b`, an unknown container
/// (404, exit 1), a reload of the unchanged config (the report as JSON).
pub(crate) fn ctl_round(host: &Host, ctl: impl Fn(&[&str]) -> Finished) {
    let out = ctl(&["stop", "a"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "a: stopped", "{out:?}");
    assert_eq!(host.state("a"), "stopped");

    let out = ctl(&["start", "a"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "a: running", "{out:?}");

    let before = host.container("b");
    let out = ctl(&["restart", "b"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "b: running", "{out:?}");
    assert_ne!(
        host.container("b")["since"],
        before["since"],
        "b was restarted"
    );

    let out = ctl(&["stop", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");
    assert!(out.stderr.contains("nope"), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "{out:?}");

    let out = ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(report["unchanged"], json!(["a", "b"]), "{report}");
}

#[test]
fn balut_ctl_controls_a_host_and_exits_0_or_1() {
    let (mut dir, token_file) = setup(&format!("{}{}", chaos_entry("a", ""), chaos_entry("b", "")));
    let args = with_args(&dir, &[&"--token-file".into(), &token_file.clone().into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    wait_ready(&host, "b");
    let addr = host.addr().to_string();
    let token = token_file.to_str().expect("a UTF-8 path").to_owned();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl"];
        all.extend_from_slice(args);
        all.extend(["--addr", &addr, "--token-file", &token]);
        run_balut(&all, CLI_TIMEOUT)
    };

    ctl_round(&host, ctl);

    // No token: 401, exit 1; BALUT_TOKEN works instead of --token-file.
    let out = run_balut(["ctl", "stop", "a", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("401"), "{out:?}");
    assert!(out.stderr.contains("missing bearer token"), "{out:?}");
    assert_eq!(host.state("a"), "running");
    let out = run_balut_with(
        ["ctl", "stop", "a", "--addr", &addr],
        &[("BALUT_TOKEN", "wrong")],
        CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("wrong bearer token"), "{out:?}");
    let out = run_balut_with(
        ["ctl", "stop", "a", "--addr", &addr],
        &[("BALUT_TOKEN", TOKEN)],
        CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "a: stopped", "{out:?}");

    // A bad config file: exit 1 with the reason.
    dir.write_config("this is = = not toml");
    let out = ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("400"), "{out:?}");
    assert!(
        out.stderr.contains("the old config stays in force"),
        "{out:?}"
    );

    // No host there: exit 1 saying so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let out = run_balut(
        [
            "ctl",
            "start",
            "a",
            "--addr",
            &closed_addr,
            "--token-file",
            &token,
        ],
        CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no balut host"), "{out:?}");
    terminate_cleanly(host);
}

/// One HTTP/1.1 request over a Unix socket; the status code and the body.
fn unix_request(socket: &std::path::Path, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: balut\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn the_unix_socket_is_owner_only_and_needs_no_token() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let (dir, token_file) = setup(&chaos_entry("a", ""));
    let socket = dir.path().join("balut.sock");
    let args = with_args(
        &dir,
        &[
            &OsString::from("--token-file"),
            &token_file.clone().into_os_string(),
            &OsString::from("--unix-socket"),
            &socket.clone().into_os_string(),
        ],
    );
    let mut host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    let meta = std::fs::symlink_metadata(&socket).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");

    // Over TCP the token is required; over the socket the file mode is the guard.
    let (status, _) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 401);
    let (status, body) = unix_request(&socket, "POST", "/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"state\":\"stopped\""), "{body}");
    let (status, body) = unix_request(&socket, "GET", "/v1/containers/a");
    assert_eq!(status, 200, "{body}");
    host.wait_state("a", "stopped", STATE_TIMEOUT);

    host.signal(Signal::SIGTERM);
    assert_eq!(
        host.wait_exit(balut_tests::EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
    assert!(!socket.exists(), "the socket is removed on exit");
}
