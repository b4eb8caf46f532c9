//! systemd's notification protocol: a real datagram socket stands in for the service
//! manager.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal};

use crate::echo_entry;

/// Every datagram received until `until` says stop or `timeout` passes.
fn receive_until(
    socket: &UnixDatagram,
    got: &mut Vec<String>,
    timeout: Duration,
    mut until: impl FnMut(&[String]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        if until(got) {
            return true;
        }
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("receiving from the notify socket: {e}"),
        }
    }
    until(got)
}

fn count(got: &[String], line: &str) -> usize {
    got.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

#[test]
fn sdnotify_ready_status_watchdog_and_stopping() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}{}",
        echo_entry("web1", "one"),
        echo_entry("web2", "two")
    ));
    let sockets = tempfile::tempdir().expect("temp dir");
    let path = sockets.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut host = Host::start_with_env(
        &dir,
        &[
            ("NOTIFY_SOCKET", path.clone().into_os_string()),
            ("WATCHDOG_USEC", OsString::from("200000")),
        ],
    );
    let mut got = Vec::new();
    let ready = receive_until(&socket, &mut got, STATE_TIMEOUT, |got| {
        count(got, "READY=1") > 0
    });
    assert!(ready, "no READY=1 in {got:#?}\n{}", host.logs());
    // READY=1 comes once the initial start is done, with the summary.
    let message = got
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .cloned()
        .unwrap_or_default();
    assert!(
        message.lines().any(|l| l == "STATUS=2 running, 0 failed"),
        "READY=1 without the summary: {message:?}"
    );
    assert_eq!(host.state("web1"), "running");
    assert_eq!(host.state("web2"), "running");

    // Half of 200 ms: about ten pings a second.
    let pings_before = count(&got, "WATCHDOG=1");
    let pinged = receive_until(&socket, &mut got, Duration::from_secs(5), |got| {
        count(got, "WATCHDOG=1") >= pings_before + 5
    });
    assert!(pinged, "too few WATCHDOG=1: {got:#?}");

    // A change of the summary is sent as STATUS=.
    let (status, body) = host.post("/v1/containers/web2/stop");
    assert_eq!(status, 200, "{body}");
    let updated = receive_until(&socket, &mut got, STATE_TIMEOUT, |got| {
        count(got, "STATUS=1 running, 0 failed, 1 stopped") > 0
    });
    assert!(updated, "no STATUS= update after a stop: {got:#?}");

    host.signal(Signal::SIGTERM);
    let stopping = receive_until(&socket, &mut got, STATE_TIMEOUT, |got| {
        count(got, "STOPPING=1") > 0
    });
    assert!(stopping, "no STOPPING=1 after SIGTERM: {got:#?}");
    assert_eq!(
        host.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
    assert_eq!(count(&got, "READY=1"), 1, "{got:#?}");
}

#[test]
fn sdnotify_abstract_socket_name() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    let name = format!("balut-e2e-notify-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .expect("abstract address");
    let socket = UnixDatagram::bind_addr(&addr).expect("binding the abstract notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut host = Host::start_with_env(
        &dir,
        &[("NOTIFY_SOCKET", OsString::from(format!("@{name}")))],
    );
    let mut got = Vec::new();
    let ready = receive_until(&socket, &mut got, STATE_TIMEOUT, |got| {
        count(got, "READY=1") > 0
    });
    assert!(ready, "no READY=1 in {got:#?}\n{}", host.logs());
    assert_eq!(
        count(&got, "WATCHDOG=1"),
        0,
        "no watchdog was asked for: {got:#?}"
    );
    host.signal(Signal::SIGTERM);
    assert_eq!(
        host.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
}
