//! The API's resource limits (`[host] api_*`, `sse_client_buffer_bytes`): a flood of
//! half-sent requests under 1,024 descriptors leaves `/healthz` and a plugin's own accepts
//! working and is closed after the header timeout; connections over the cap are refused at
//! once; a client that never reads its event stream is dropped while a reading one keeps
//! its events; the Unix socket has the same limits; the soft open-file limit is raised.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use balut_tests::{Host, Lib, PluginDir, STATE_TIMEOUT, has_field, http_get, raise_open_files};

use crate::{chaos_entry, echo_entry, terminate_cleanly};

/// A request line and one header, without the blank line that ends the head.
const HALF_SENT: &[u8] = b"GET /v1/containers HTTP/1.1\r\nHost: balut\r\n";

/// Either kind of API socket, with a read timeout.
trait Socket: Read + Write {
    fn read_timeout(&self, timeout: Duration);
}

impl Socket for TcpStream {
    fn read_timeout(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout))
            .expect("set a read timeout");
    }
}

impl Socket for UnixStream {
    fn read_timeout(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout))
            .expect("set a read timeout");
    }
}

/// Whether the host closed `socket` by `deadline`: reading it comes to an end of file or a
/// reset (whatever it was sent first is read and dropped).
fn closed_by(socket: &mut impl Socket, deadline: Instant) -> bool {
    let mut buf = [0; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        socket.read_timeout(left.max(Duration::from_millis(1)));
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// What a `GET` over a fresh connection got.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A response with this status.
    Status(u16),
    /// The connection was closed or reset before a status line came.
    Closed,
    /// Nothing within the time given.
    Nothing,
}

/// Sends `GET path` on `socket` and reads the status line, within `timeout`.
fn get_on(mut socket: impl Socket, path: &str, timeout: Duration) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: balut\r\nConnection: close\r\n\r\n");
    if socket.write_all(request.as_bytes()).is_err() {
        return Answer::Closed;
    }
    socket.read_timeout(timeout);
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n") {
        match socket.read(&mut byte) {
            Ok(0) => return Answer::Closed,
            Ok(_) => head.push(byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Answer::Nothing;
            }
            Err(_) => return Answer::Closed,
        }
    }
    let line = String::from_utf8_lossy(&head);
    match line.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
        Some(status) => Answer::Status(status),
        None => panic!("not an HTTP status line: {line:?}"),
    }
}

/// `GET path` over a new TCP connection to `addr`, within `timeout`.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Answer {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(socket) => get_on(socket, path, timeout),
        Err(e) if e.kind() == ErrorKind::TimedOut => Answer::Nothing,
        Err(_) => Answer::Closed,
    }
}

/// Opens `GET /v1/events` on `socket`, reads the response head (so the host is serving
/// it) and never reads again.
fn never_reading<S: Socket>(mut socket: S) -> S {
    socket
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: balut\r\nAccept: text/event-stream\r\n\r\n")
        .expect("send the request");
    socket.read_timeout(STATE_TIMEOUT);
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the event stream's head: {other:?} after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

#[test]
fn a_flood_of_half_sent_requests_leaves_healthz_and_plugins_answering_and_is_closed() {
    const FLOOD: usize = 1200;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    if !raise_open_files(FLOOD as u64 + 512) {
        eprintln!("skipped: this test needs {} open files", FLOOD + 512);
        return;
    }
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&format!(
        "[host]\napi_header_timeout_ms = {}\n\n{}",
        HEADER_TIMEOUT.as_millis(),
        echo_entry("echo", "bystander")
    ));
    // 1,024 descriptors, soft and hard: raising it is no way out; the reserve must hold.
    let host = Host::spawn_with_open_files(dir.run_args(), Some(dir.tmp()), 1024, 1024);
    host.wait_state("echo", "running", STATE_TIMEOUT);
    let echo = host.echo_addr("echo");

    // No token needed: half a request head on each connection, then silence.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let Ok(mut socket) = TcpStream::connect_timeout(&host.addr(), Duration::from_secs(5))
        else {
            break;
        };
        if socket.write_all(HALF_SENT).is_ok() {
            flood.push(socket);
        }
    }
    eprintln!("[limits] {} half-sent requests open", flood.len());

    // The host still answers a client that sends its request, and the plugin beside it
    // still accepts its own connections.
    let asked = Instant::now();
    let health = get(host.addr(), "/healthz", Duration::from_secs(10));
    assert_eq!(
        health,
        Answer::Status(200),
        "/healthz under a flood of {} half-sent requests (after {:?})\n{}",
        flood.len(),
        asked.elapsed(),
        host.logs()
    );
    let (status, body) = http_get(echo, "/");
    assert_eq!((status, body.contains("bystander")), (200, true), "{body}");

    // Every one of them is closed: made room for newer ones, or timed out.
    let deadline = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(30);
    let mut open = 0;
    for socket in &mut flood {
        if !closed_by(socket, deadline) {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "half-sent requests still open {:?} after the header timeout",
        Duration::from_secs(30)
    );
    let line = host.wait_log(
        "closed API connections to stay within the limits",
        STATE_TIMEOUT,
    );
    assert!(has_field(&line, "max_connections", "512"), "{line}");
    assert_eq!(
        get(host.addr(), "/healthz", Duration::from_secs(10)),
        Answer::Status(200)
    );
    terminate_cleanly(host);
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let dir = PluginDir::new();
    let host = Host::spawn_with_open_files(dir.run_args(), Some(dir.tmp()), 1024, 4096);
    let line = host.wait_log("raised the open-file limit", STATE_TIMEOUT);
    assert!(
        has_field(&line, "open_files", "4096") && has_field(&line, "was", "1024"),
        "{line}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", host.pid()))
        .expect("read the host's limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "4096", "4096", "files"]
    );
    terminate_cleanly(host);
}

#[test]
fn connections_over_the_cap_are_refused_not_queued() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "[host]\napi_max_connections = 4\n\n{}",
        chaos_entry("a", "")
    ));
    let host = Host::start(&dir);
    host.wait_state("a", "running", STATE_TIMEOUT);
    // Four clients in a request that does not end (event streams): the cap is reached.
    let mut streams: Vec<_> = (0..4).map(|_| host.events(None)).collect();

    // A fifth is answered 503 or closed at once, not left waiting for a place.
    for _ in 0..3 {
        let asked = Instant::now();
        let answer = get(host.addr(), "/healthz", Duration::from_secs(10));
        assert!(
            matches!(answer, Answer::Status(503) | Answer::Closed),
            "a connection over the cap got {answer:?} after {:?}",
            asked.elapsed()
        );
    }
    host.wait_log("refused=", STATE_TIMEOUT);
    // A place freed is a place taken.
    streams.pop();
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        match get(host.addr(), "/healthz", Duration::from_secs(10)) {
            Answer::Status(200) => break,
            other if Instant::now() > deadline => {
                panic!("/healthz with a place free: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    // The refusals are counted in /metrics too, per listener and reason.
    let (status, _, metrics) = host.get_text("/metrics");
    assert_eq!(status, 200);
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("balut_api_connections_closed_total{") && l.contains("reason=\"refused\"")
        })
        .unwrap_or_else(|| panic!("no refused counter in /metrics:\n{metrics}"));
    let count: f64 = refused
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 3.0, "{refused}");

    // The streams kept their place and still get events.
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    for stream in &streams {
        stream.until("a's stop", STATE_TIMEOUT, |e| {
            e.is_state_of("a") && e.data["to"] == "stopped"
        });
    }
    drop(streams);
    terminate_cleanly(host);
}

#[test]
fn a_client_that_never_reads_its_event_stream_is_dropped_and_a_reading_one_is_not() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    // Two containers whose liveness flips every 10 ms: a few hundred events a second.
    let mut config =
        String::from("[host]\napi_send_timeout_ms = 1000\nsse_client_buffer_bytes = 4096\n\n");
    for name in ["f1", "f2"] {
        config.push_str(&chaos_entry(name, "flap_health_every = 1"));
        config.push_str("liveness = { period_ms = 10, failure_threshold = 1000000 }\n");
    }
    dir.write_config(&config);
    let host = Host::start(&dir);
    host.wait_state("f1", "running", STATE_TIMEOUT);
    let reading = host.events(None);
    let mark = host.mark();
    let mut silent = never_reading(TcpStream::connect(host.addr()).expect("connect to the API"));

    let line = host.wait_log_where(
        "the never-reading client to be dropped",
        STATE_TIMEOUT,
        |l| l.contains("closed an API connection whose client took nothing"),
    );
    assert!(has_field(&line, "event_stream", "true"), "{line}");
    assert!(
        host.lines_since(mark).iter().any(|l| l == &line),
        "dropped after it connected"
    );
    // Its socket is closed: what it did not read, then the end.
    assert!(
        closed_by(&mut silent, Instant::now() + STATE_TIMEOUT),
        "the never-reading client's connection is still open"
    );
    // The reading client still gets what happens after that.
    let (status, body) = host.post("/v1/containers/f2/stop");
    assert_eq!(status, 200, "{body}");
    reading.until("f2's stop on the reading client", STATE_TIMEOUT, |e| {
        e.is_state_of("f2") && e.data["to"] == "stopped"
    });
    drop(reading);
    terminate_cleanly(host);
}

#[test]
fn the_unix_socket_has_the_same_limits() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "[host]\napi_header_timeout_ms = 1000\napi_max_connections = 2\n\n{}",
        chaos_entry("a", "")
    ));
    let socket = dir.path().join("api.sock");
    let mut args = dir.run_args();
    args.extend(["--unix-socket".into(), socket.clone().into()]);
    let host = Host::spawn(args, Some(dir.tmp()));
    host.wait_state("a", "running", STATE_TIMEOUT);
    let connect = || UnixStream::connect(&socket).expect("connect to the unix socket");

    // A half-sent request is closed after the header timeout.
    let mut half = connect();
    half.write_all(HALF_SENT).expect("send half a request");
    let sent = Instant::now();
    assert!(
        closed_by(&mut half, sent + STATE_TIMEOUT),
        "a half-sent request on the unix socket is still open"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the header timeout",
        sent.elapsed()
    );

    // Two event streams fill it; a third connection is refused at once.
    let streams = [never_reading(connect()), never_reading(connect())];
    let asked = Instant::now();
    let answer = get_on(connect(), "/healthz", Duration::from_secs(10));
    assert!(
        matches!(answer, Answer::Status(503) | Answer::Closed),
        "a connection over the cap of the unix socket got {answer:?} after {:?}",
        asked.elapsed()
    );
    // The TCP listener has places of its own.
    assert_eq!(
        get(host.addr(), "/healthz", Duration::from_secs(10)),
        Answer::Status(200)
    );
    drop(streams);
    terminate_cleanly(host);
}
