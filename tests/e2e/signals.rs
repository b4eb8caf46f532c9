//! Signals never wait on the supervisor: the first SIGINT/SIGTERM starts the shutdown at
//! once, whatever the supervisor is doing (starts in flight are given up; the budget counts
//! from the signal), and a second one exits at once with 130.

use std::time::{Duration, Instant};

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal};

use crate::chaos_entry;

/// Far longer than the shutdown budgets below, so a host that waits for it is caught.
const SLOW: Duration = Duration::from_secs(25);
/// What a prompt exit may take on a loaded machine; still well under [`SLOW`].
const PROMPT: Duration = Duration::from_secs(12);

fn slow_starter(name: &str) -> String {
    format!(
        "{}start_timeout_ms = 60000\n",
        chaos_entry(name, &format!("start_delay_ms = {}", SLOW.as_millis()))
    )
}

fn exits_promptly(host: &mut Host, signal_at: Instant) -> i32 {
    let status = host.wait_exit(EXIT_TIMEOUT);
    let took = signal_at.elapsed();
    assert!(
        took < PROMPT,
        "the host took {took:?} to exit after the signal (the slow call takes {SLOW:?})\n{}",
        host.logs()
    );
    status.code().unwrap_or(-1)
}

#[test]
fn a_sigterm_during_a_long_start_stops_within_the_budget() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "[host]\nshutdown_timeout_ms = 2000\n{}",
        slow_starter("slow")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("slow", "starting", STATE_TIMEOUT);
    let at = Instant::now();
    host.signal(Signal::SIGTERM);
    let code = exits_promptly(&mut host, at);
    // A start given up is not a clean stop.
    assert_eq!(code, 1, "{}", host.logs());
    assert!(
        !host.lines_with(&["given up", "container=slow"]).is_empty(),
        "the log says the start was given up:\n{}",
        host.logs()
    );
}

#[test]
fn a_sigterm_during_a_sighup_reload_is_acted_on_at_once() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "[host]\nshutdown_timeout_ms = 2000\n{}",
        chaos_entry("fast", "")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("fast", "running", STATE_TIMEOUT);
    dir.write_config(&format!(
        "[host]\nshutdown_timeout_ms = 2000\n{}{}",
        chaos_entry("fast", ""),
        slow_starter("slow")
    ));
    host.signal(Signal::SIGHUP);
    host.wait_state("slow", "starting", STATE_TIMEOUT);
    let at = Instant::now();
    host.signal(Signal::SIGTERM);
    exits_promptly(&mut host, at);
    assert!(
        !host
            .lines_with(&["container stopped", "container=fast"])
            .is_empty(),
        "the running container was stopped on the way:\n{}",
        host.logs()
    );
}

#[test]
fn a_second_sigterm_exits_at_once_even_during_a_reload_stuck_in_a_stop() {
    let stuck = |message: &str| {
        format!(
            "[host]\nshutdown_timeout_ms = 60000\n{}stop_timeout_ms = 40000\n",
            chaos_entry(
                "stuck",
                &format!("hang_in = \"stop\", hang_ms = 60000, log_line_bytes = {message}")
            )
        )
    };
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&stuck("10"));
    let mut host = Host::start(&dir);
    host.wait_state("stuck", "running", STATE_TIMEOUT);
    // A changed config restarts `stuck`, whose stop hangs: the reload is stuck in it.
    dir.write_config(&stuck("20"));
    host.signal(Signal::SIGHUP);
    host.wait_state("stuck", "stopping", STATE_TIMEOUT);
    host.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let at = Instant::now();
    host.signal(Signal::SIGTERM);
    let code = exits_promptly(&mut host, at);
    assert_eq!(code, 130, "forced by the second signal\n{}", host.logs());
}

/// An open event stream (a console left open, `balut events`) at a SIGTERM ends cleanly:
/// its chunked body gets its last chunk, so the client sees the end of a stream, not a
/// broken connection, and the host does not wait for the stream to go.
#[test]
fn event_streams_end_cleanly_at_a_sigterm() {
    use std::io::{Read, Write};

    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&chaos_entry("a", ""));
    let mut host = Host::start(&dir);
    host.wait_state("a", "running", STATE_TIMEOUT);
    let mut streams: Vec<std::net::TcpStream> = ["/v1/events", "/v1/containers/a/logs?follow=1"]
        .iter()
        .map(|path| {
            let mut socket = std::net::TcpStream::connect(host.addr()).expect("connect");
            write!(
                socket,
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                host.addr()
            )
            .expect("send");
            socket
                .set_read_timeout(Some(STATE_TIMEOUT))
                .expect("a read timeout");
            socket
        })
        .collect();
    // Both streams are open (their heads have come) before the signal.
    for socket in &mut streams {
        let mut head = [0u8; 12];
        socket.read_exact(&mut head).expect("the response head");
        assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    }
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", host.logs());
    for socket in &mut streams {
        let mut rest = Vec::new();
        let read = socket.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(
            read.is_ok() && text.ends_with("\r\n0\r\n\r\n"),
            "the stream ends with its last chunk ({read:?}), got: ...{:?}",
            &text[text.len().saturating_sub(80)..]
        );
    }
}
