//! The tasks that serve one child process beside its calls: reading its frames (replies
//! to the calls; log lines, readiness, failures and finishes to the instance's services),
//! passing its stderr on, and reaping it (the reason it ended, told to the calls and, if
//! nobody asked for the end, to the supervisor).

use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use balut_plugin_api::ffi::FfiLevel;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::watch;
use tracing::warn;

use super::protocol::{self, PROTOCOL, ToHost};
use super::{KILL_GRACE, Link, STDERR_DRAIN, ending};

/// Reads the child's frames: replies to their calls, the rest to the container's services.
pub(super) async fn read_frames(
    reader: OwnedReadHalf,
    link: Arc<Link>,
    terminate: watch::Sender<bool>,
) {
    // One read per frame, mostly.
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut greeted = false;
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).await.is_err() {
            return; // Closed: the waiter reports why.
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > protocol::MAX_FRAME {
            warn!(container = %link.container, len, "its process sent an oversized frame; ending it");
            terminate.send_replace(true);
            return;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let message: ToHost = match protocol::decode(&body) {
            Ok(message) => message,
            Err(e) => {
                warn!(container = %link.container, error = %e, "its process sent a frame the host cannot read; ending it");
                terminate.send_replace(true);
                return;
            }
        };
        match message {
            ToHost::Hello { protocol, .. } => {
                if protocol != PROTOCOL {
                    warn!(container = %link.container, child = protocol, host = PROTOCOL, "its process speaks another protocol version; ending it");
                    terminate.send_replace(true);
                    return;
                }
                greeted = true;
            }
            _ if !greeted => {
                warn!(container = %link.container, "its process did not greet first; ending it");
                terminate.send_replace(true);
                return;
            }
            ToHost::Reply { id, result } => {
                if let Some(reply) = link.replies().remove(&id) {
                    let _ = reply.send(result);
                }
            }
            ToHost::Log {
                level,
                message,
                fields,
            } => {
                if let Some(services) = link.services() {
                    let fields = fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                    services.log(level_of(level), &message, fields);
                }
            }
            ToHost::Ready(ready) => {
                if let Some(services) = link.services() {
                    services.report_ready(ready);
                }
            }
            ToHost::Failed(reason) => {
                if let Some(services) = link.services() {
                    services.report_failure(&reason);
                }
            }
            ToHost::Finished(message) => {
                if let Some(services) = link.services() {
                    services.report_finished(&message);
                }
            }
        }
    }
}

/// The most verbose level of plugin log lines the host's subscriber shows, as the protocol
/// numbers levels.
pub(super) fn shown_plugin_level() -> Option<u8> {
    let shown = |level| match level {
        FfiLevel::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        FfiLevel::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
        FfiLevel::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
        FfiLevel::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
        FfiLevel::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
    };
    (0..=4u8).rev().find(|&n| shown(level_of(n)))
}

fn level_of(level: u8) -> FfiLevel {
    match level {
        0 => FfiLevel::Error,
        1 => FfiLevel::Warn,
        2 => FfiLevel::Info,
        3 => FfiLevel::Debug,
        _ => FfiLevel::Trace,
    }
}

/// The longest line of a child's stderr passed on whole; a longer one is passed on in
/// pieces this long, so a plugin writing without newlines cannot grow the host's memory.
const MAX_STDERR_LINE: usize = 64 * 1024;

/// Passes the child's stderr on to the host's, line by line, each line led by the
/// container's name and the process's pid (`web[4242]: ...`), noting what tells how it
/// ends.
pub(super) async fn read_stderr(
    stderr: Option<tokio::process::ChildStderr>,
    link: Arc<Link>,
    pid: u32,
) {
    use std::io::Write;
    let Some(stderr) = stderr else { return };
    let mut input = BufReader::new(stderr);
    let prefix = format!("{}[{pid}]: ", link.container);
    let mut line = Vec::new();
    loop {
        let Ok(chunk) = input.fill_buf().await else {
            return;
        };
        if chunk.is_empty() {
            if !line.is_empty() {
                pass_on(&link, &prefix, &mut line);
            }
            return;
        }
        let (taken, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_STDERR_LINE.saturating_sub(line.len()).max(1);
        let taken = taken.min(room);
        line.extend_from_slice(&chunk[..taken]);
        input.consume(taken);
        if complete || line.len() >= MAX_STDERR_LINE {
            pass_on(&link, &prefix, &mut line);
        }
    }

    fn pass_on(link: &Link, prefix: &str, line: &mut Vec<u8>) {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        link.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(&String::from_utf8_lossy(line));
        let mut out = Vec::with_capacity(prefix.len() + line.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        let _ = std::io::stderr().write_all(&out);
        line.clear();
    }
}

/// Reaps the child: when it ends on its own, or when asked to end it. Then tells the calls
/// (and, if nobody asked, the supervisor) why it ended.
pub(super) async fn wait(
    mut process: tokio::process::Child,
    link: Arc<Link>,
    mut terminate: watch::Receiver<bool>,
    drained: tokio::task::JoinHandle<()>,
    ended: watch::Sender<Option<String>>,
) {
    let status = tokio::select! {
        status = process.wait() => status,
        () = async { let _ = terminate.wait_for(|end| *end).await; } => {
            if let Some(pid) = process.id().and_then(|pid| i32::try_from(pid).ok()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(KILL_GRACE, process.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = process.start_kill();
                    process.wait().await
                }
            }
        }
    };
    let _ = tokio::time::timeout(STDERR_DRAIN, drained).await;
    let reason = match status {
        Ok(status) => {
            let hints = *link.hints.lock().unwrap_or_else(PoisonError::into_inner);
            ending::describe(status, hints)
        }
        Err(e) => format!("its process could not be waited for: {e}"),
    };
    ended.send_replace(Some(reason.clone()));
    // Calls still waiting learn the reason from `ended` when their reply is dropped.
    link.replies().clear();
    if !link.ending_on_purpose.load(Ordering::SeqCst) {
        warn!(container = %link.container, reason = %reason, "the container's process ended");
        if let Some(services) = link.services() {
            services.report_ended(&reason);
        }
    }
}
