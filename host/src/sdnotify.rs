//! systemd's notification protocol (`sd_notify(3)`), without libsystemd: one datagram per
//! message to the Unix socket named by `NOTIFY_SOCKET` (a path, or an abstract name written
//! with a leading `@`).
//!
//! `READY=1` with a one-line `STATUS=` once the initial start is done, a new `STATUS=`
//! whenever the summary changes, `STOPPING=1` on shutdown, and `WATCHDOG=1` every half of
//! `WATCHDOG_USEC` when the watchdog is on for this process. The watchdog ping comes from
//! the async runtime, so it proves the runtime is alive, not that every plugin is.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::model::{Snapshot, State};
use crate::status::Board;

/// A connection to the service manager's notification socket.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Arc<UnixDatagram>,
    addr: Arc<SocketAddr>,
    /// What `NOTIFY_SOCKET` said, for messages.
    name: Arc<str>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, or `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let Some(name) = value.to_str().map(str::to_owned) else {
            return Err(format!(
                "NOTIFY_SOCKET {}: not valid UTF-8",
                value.to_string_lossy()
            ));
        };
        if name.is_empty() {
            return Ok(None);
        }
        Self::connect(&name).map(Some)
    }

    /// A notifier for the socket `name`: a path, or `@name` for an abstract socket.
    pub fn connect(name: &str) -> Result<Self, String> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
            None if name.starts_with('/') => SocketAddr::from_pathname(name),
            None => {
                return Err(format!(
                    "NOTIFY_SOCKET {name}: neither an absolute path nor an abstract name (@...)"
                ));
            }
        }
        .map_err(|e| format!("NOTIFY_SOCKET {name}: not a usable socket address: {e}"))?;
        let socket = UnixDatagram::unbound()
            .map_err(|e| format!("NOTIFY_SOCKET {name}: cannot create a datagram socket: {e}"))?;
        // Never block the runtime on a service manager that does not read.
        socket.set_nonblocking(true).map_err(|e| {
            format!("NOTIFY_SOCKET {name}: cannot make the socket non-blocking: {e}")
        })?;
        Ok(Self {
            socket: Arc::new(socket),
            addr: Arc::new(addr),
            name: name.into(),
        })
    }

    /// Sends one message (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }

    /// Sends `message`, logging (not failing) when the socket does not take it.
    fn notify(&self, message: &str) {
        match self.send(message) {
            Ok(()) => debug!(socket = %self.name, message, "sd_notify sent"),
            Err(e) => warn!(socket = %self.name, error = %e, message, "sd_notify: cannot send"),
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping all containers");
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set and
/// `WATCHDOG_PID` (if set) is this process.
pub fn watchdog_interval() -> Option<Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// The one-line status: running and failed counts, then every other state that has
/// containers, e.g. `3 running, 0 failed, 1 waiting`.
pub fn summary(snapshot: &Snapshot) -> String {
    let count = |state| {
        snapshot
            .containers
            .iter()
            .filter(|c| c.state == state)
            .count()
    };
    let mut parts = vec![
        format!("{} running", count(State::Running)),
        format!("{} failed", count(State::Failed)),
    ];
    for (state, label) in [
        (State::Backoff, "in backoff"),
        (State::Quarantined, "quarantined"),
        (State::Waiting, "waiting"),
        (State::Starting, "starting"),
        (State::Stopping, "stopping"),
        (State::Stopped, "stopped"),
    ] {
        let n = count(state);
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    parts.join(", ")
}

/// Talks to the service manager until aborted: `READY=1` once `started` fires, `STATUS=`
/// on every change of the summary, `WATCHDOG=1` every `watchdog` (from the beginning, so a
/// slow start is not mistaken for a hang).
pub async fn run(
    notifier: Notifier,
    board: Board,
    started: oneshot::Receiver<()>,
    watchdog: Option<Duration>,
) {
    let mut ping = watchdog.map(|period| {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    if let Some(period) = watchdog {
        info!(socket = %notifier.name, period_ms = period.as_millis() as u64, "sd_notify watchdog on");
    }
    let mut started = Some(started);
    let (_, mut events) = board.events.subscribe(u64::MAX);
    let mut shown: Option<String> = None;
    loop {
        tokio::select! {
            () = tick(&mut ping) => {
                notifier.notify("WATCHDOG=1");
                continue;
            }
            result = fired(&mut started) => {
                started = None;
                if result.is_err() {
                    // The supervisor ended before its start was done (shutdown during start).
                    continue;
                }
                let status = summary(&board.read());
                info!(socket = %notifier.name, status = %status, "sd_notify: ready");
                notifier.notify(&format!("READY=1\nSTATUS={status}"));
                shown = Some(status);
                continue;
            }
            event = events.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
        if shown.is_some() {
            let status = summary(&board.read());
            if shown.as_deref() != Some(status.as_str()) {
                notifier.notify(&format!("STATUS={status}"));
                shown = Some(status);
            }
        }
    }
}

/// The next watchdog tick; never when the watchdog is off.
async fn tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The start signal; never once it was taken.
async fn fired(
    started: &mut Option<oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match started {
        Some(receiver) => receiver.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_period_for_this_process_only() {
        assert_eq!(
            parse_watchdog(Some("200000"), None, 7),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            parse_watchdog(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_watchdog(Some("200000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("x"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
    }

    #[test]
    fn sends_datagrams_to_a_path_and_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
        notifier.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("balut-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::connect(&format!("@{name}")).unwrap();
        notifier.send("WATCHDOG=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        let error = Notifier::connect("relative/path").unwrap_err();
        assert!(error.contains("relative/path"), "{error}");
    }

    #[test]
    fn summary_counts_running_and_failed_then_the_rest() {
        assert_eq!(summary(&Snapshot::default()), "0 running, 0 failed");
    }
}
