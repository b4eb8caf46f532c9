//! The client commands over the owner-only Unix socket: `balut status [--watch]`,
//! `balut ctl` and `balut events` with `--unix-socket PATH` work without a token while TCP
//! still needs one; a missing or wrong socket is a clear error; `--addr` with
//! `--unix-socket` is a usage error.

use std::ffi::OsString;
use std::path::Path;

use balut_tests::{BalutProcess, Host, STATE_TIMEOUT, run_balut, run_balut_with};
use serde_json::Value;

use crate::control::{CLI_TIMEOUT, ctl_round, setup, wait_ready, with_args};
use crate::{chaos_entry, terminate, terminate_cleanly};

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Whether a table line is the row of container `name` in `state`.
fn row(lines: &[String], name: &str, state: &str) -> bool {
    lines.iter().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(name) && words.any(|w| w == state)
    })
}

#[test]
fn status_ctl_and_events_work_over_the_unix_socket_without_a_token() {
    let (dir, token_file) = setup(&format!("{}{}", chaos_entry("a", ""), chaos_entry("b", "")));
    let socket = dir.path().join("balut.sock");
    let args = with_args(
        &dir,
        &[
            &OsString::from("--token-file"),
            &token_file.into_os_string(),
            &OsString::from("--unix-socket"),
            &socket.clone().into_os_string(),
        ],
    );
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    wait_ready(&host, "b");
    let sock = utf8(&socket);
    let balut = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--unix-socket", sock]);
        run_balut(&all, CLI_TIMEOUT)
    };

    // Over TCP a mutation still needs the token.
    let addr = host.addr().to_string();
    let out = run_balut(["ctl", "stop", "a", "--addr", &addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("missing bearer token"), "{out:?}");

    let out = balut(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    assert!(lines[0].starts_with("NAME"), "{out:?}");
    assert!(
        row(&lines, "a", "running") && row(&lines, "b", "running"),
        "{out:?}"
    );
    let out = balut(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let body: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(
        body["containers"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );

    // The long-lived streams: `events` replays and follows, `status --watch` redraws.
    let mut events = BalutProcess::spawn(["events", "--unix-socket", sock, "--since", "0"]);
    events.wait_stdout("a's start in the event lines", STATE_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|l| l.contains(" state ") && l.contains("container=a") && l.contains("to=running"))
    });
    let mut watch = BalutProcess::spawn(["status", "--watch", "--unix-socket", sock]);
    watch.wait_stdout("a running in the table", STATE_TIMEOUT, |l| {
        row(l, "a", "running")
    });

    // No token needed.
    let out = balut(&["ctl", "stop", "a"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "a: stopped", "{out:?}");
    assert_eq!(host.state("a"), "stopped");
    events.wait_stdout("a live line for a's stop", STATE_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|l| l.contains(" state ") && l.contains("container=a") && l.contains("to=stopped"))
    });
    watch.wait_stdout("a stopped in a redrawn table", STATE_TIMEOUT, |l| {
        row(l, "a", "stopped")
    });
    assert!(events.is_running() && watch.is_running());
    drop(events);
    drop(watch);

    // A token in the environment (here a wrong one) is not used over the socket.
    let out = run_balut_with(
        ["ctl", "start", "a", "--unix-socket", sock],
        &[("BALUT_TOKEN", "wrong")],
        CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "a: running", "{out:?}");
    // A token file given anyway is not read, and the user is told so.
    let out = balut(&["ctl", "restart", "a", "--token-file", "/nonexistent/token"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/token is not used"),
        "{out:?}"
    );

    // The rest as over TCP.
    ctl_round(&host, |args: &[&str]| balut(&[&["ctl"], args].concat()));
    terminate_cleanly(host);
}

#[test]
fn a_missing_or_wrong_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temp folder");
    let missing = dir.path().join("missing.sock");
    let file = dir.path().join("file");
    std::fs::write(&file, "not a socket").expect("write a file");
    // A socket file nobody listens on (std leaves it behind when the listener goes).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind a socket"));

    // A refused TCP connection exits 1: so does every socket that cannot be used.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let out = run_balut(["status", "--addr", &closed_addr], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    for (path, reason) in [
        (&missing, "does not exist"),
        (&file, "not a socket"),
        (&stale, "connection refused"),
    ] {
        let path = utf8(path);
        for command in [
            &["status"][..],
            &["status", "--watch"],
            &["ctl", "stop", "a"],
            &["ctl", "reload"],
            &["events"],
        ] {
            let mut args = command.to_vec();
            args.extend(["--unix-socket", path]);
            let out = run_balut(&args, CLI_TIMEOUT);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            assert!(
                out.stderr.contains(path) && out.stderr.contains(reason),
                "{args:?} names the path and says {reason:?}: {out:?}"
            );
            assert!(out.stdout.is_empty(), "{out:?}");
        }
    }
}

#[test]
fn addr_and_unix_socket_together_are_a_usage_error() {
    for command in [
        &["status"][..],
        &["ctl", "stop", "a"],
        &["ctl", "reload"],
        &["events"],
    ] {
        let mut args = command.to_vec();
        args.extend([
            "--addr",
            "127.0.0.1:7070",
            "--unix-socket",
            "/run/balut.sock",
        ]);
        let out = run_balut(&args, CLI_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("cannot be used with"), "{out:?}");
    }
}

/// `balut run` arguments for `dir` serving also on `socket`.
fn with_socket(dir: &balut_tests::PluginDir, socket: &Path) -> Vec<OsString> {
    with_args(
        dir,
        &[
            &OsString::from("--unix-socket"),
            &socket.as_os_str().to_owned(),
        ],
    )
}

#[test]
fn a_second_host_on_a_live_socket_is_refused_and_the_first_keeps_serving() {
    let (dir, _) = setup(&chaos_entry("a", ""));
    let socket = dir.path().join("balut.sock");
    let sock = utf8(&socket);
    let first = Host::spawn_with(with_socket(&dir, &socket), Some(dir.tmp()), &[]);
    wait_ready(&first, "a");

    let mut args = with_socket(&dir, &socket);
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let out = run_balut(&args, CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
    assert!(
        out.stderr.contains(sock) && out.stderr.contains("is in use"),
        "the refusal names the path and why: {out:?}"
    );

    // The first host still answers on its socket, and removes it when it exits.
    let out = run_balut(["status", "--unix-socket", sock], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(row(
        &out.stdout.lines().map(str::to_owned).collect::<Vec<_>>(),
        "a",
        "running"
    ));
    terminate_cleanly(first);
    assert!(!socket.exists(), "the host removes its own socket at exit");
}

#[test]
fn a_stale_socket_is_replaced() {
    let (dir, _) = setup(&chaos_entry("a", ""));
    let socket = dir.path().join("balut.sock");
    // A socket file nobody listens on any more, as a killed host leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind a socket"));
    let host = Host::spawn_with(with_socket(&dir, &socket), Some(dir.tmp()), &[]);
    host.wait_log("replacing a stale unix socket", STATE_TIMEOUT);
    wait_ready(&host, "a");
    let out = run_balut(["status", "--unix-socket", utf8(&socket)], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    terminate_cleanly(host);
    assert!(!socket.exists());
}

#[test]
fn a_host_leaves_in_place_a_socket_that_replaced_its_own() {
    let (dir, _) = setup(&chaos_entry("a", ""));
    let socket = dir.path().join("balut.sock");
    let host = Host::spawn_with(with_socket(&dir, &socket), Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    // Someone else removes the host's socket and serves on the path.
    std::fs::remove_file(&socket).expect("remove the host's socket");
    let theirs = std::os::unix::net::UnixListener::bind(&socket).expect("bind another socket");

    let mut host = host;
    assert_eq!(terminate(&mut host), 0, "{}", host.logs());
    assert!(socket.exists(), "the other socket is still there");
    let _client = std::os::unix::net::UnixStream::connect(&socket)
        .expect("the path still leads to the other listener");
    theirs
        .accept()
        .expect("the other listener gets the connection");
    assert!(
        host.logs().contains("not removing the unix socket"),
        "and says why it left it: {}",
        host.logs()
    );
}
