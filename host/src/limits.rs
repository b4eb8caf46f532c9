//! The API's resource limits: what `[host]` asks for, fitted to the process's open-file
//! limit (`RLIMIT_NOFILE`), which the host raises to its hard limit at start.
//!
//! Every API connection is a descriptor. So are the plugin libraries being opened and
//! copied, the folder watch, the host's own files and whatever sockets and files the
//! plugins open. [`RESERVED_DESCRIPTORS`] of the limit are never given to API connections:
//! a flood of clients may fill the API's share, never the rest, so plugin loads, the
//! plugins' own accepts and `/healthz` (which makes room by closing the oldest connection
//! that has not sent a request: `http/slots.rs`) keep working.

use std::time::Duration;

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
use tracing::{info, warn};

use crate::config::HostConfig;

/// Descriptors kept out of the API's reach, whatever the config says.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// The open-file limit the soft limit is raised to when the hard limit is "unlimited"
/// (Linux never allows more than `fs.nr_open`, 1,048,576 by default).
const UNLIMITED_FALLBACK: u64 = 1 << 20;

/// The limits one API listener works under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// A request's line and headers must arrive within this (and an idle keep-alive
    /// connection is closed after it).
    pub header_timeout: Duration,
    /// Connections served at once on this listener.
    pub max_connections: usize,
    /// A client whose writes stay blocked this long is disconnected.
    pub send_timeout: Duration,
    /// The kernel send buffer (`SO_SNDBUF`) of an event stream's connection.
    pub sse_buffer: usize,
}

impl ApiLimits {
    /// The limits `host` asks for, the connection cap lowered (with a warning) when
    /// `listeners` listeners of that many connections would not fit under the open-file
    /// limit `open_files` beside the reserve.
    pub fn fit(host: &HostConfig, open_files: u64, listeners: usize) -> Self {
        let asked = u64::from(host.api_max_connections.get());
        let room = max_per_listener(open_files, listeners);
        if asked > room {
            warn!(
                api_max_connections = asked,
                open_files,
                reserved = RESERVED_DESCRIPTORS,
                listeners,
                serving = room,
                "host.api_max_connections is more than the open-file limit holds beside the \
                 descriptors kept for plugins: each API listener serves fewer connections"
            );
        }
        Self {
            header_timeout: host.api_header_timeout_ms.duration(),
            max_connections: usize::try_from(asked.min(room)).unwrap_or(usize::MAX),
            send_timeout: host.api_send_timeout_ms.duration(),
            sse_buffer: host.sse_client_buffer_bytes.get(),
        }
    }
}

/// How many connections each of `listeners` listeners may hold under `open_files`
/// descriptors with [`RESERVED_DESCRIPTORS`] kept back (at least one).
fn max_per_listener(open_files: u64, listeners: usize) -> u64 {
    let listeners = u64::try_from(listeners.max(1)).unwrap_or(u64::MAX);
    (open_files.saturating_sub(RESERVED_DESCRIPTORS) / listeners).max(1)
}

/// Raises the soft open-file limit to the hard limit and logs the limit in force, which
/// it returns. When it cannot, it logs why and returns the soft limit as it is.
pub fn raise_open_files() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE); assuming 1024");
            return 1024;
        }
    };
    let target = if hard == RLIM_INFINITY {
        UNLIMITED_FALLBACK
    } else {
        hard
    };
    if soft >= target {
        info!(open_files = soft, "open-file limit (RLIMIT_NOFILE)");
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            info!(
                open_files = target,
                was = soft,
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            );
            target
        }
        Err(e) => {
            warn!(open_files = soft, hard, error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            soft
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_to_everything_else() {
        let mut host = HostConfig::default();
        // Plenty of descriptors: the config's cap.
        let fitted = ApiLimits::fit(&host, 65_536, 2);
        assert_eq!(fitted.max_connections, 512);
        assert_eq!(fitted.header_timeout, Duration::from_secs(10));
        assert_eq!(fitted.sse_buffer, 64 * 1024);
        // The common 1,024: one listener keeps 512, two share what the reserve leaves.
        assert_eq!(ApiLimits::fit(&host, 1024, 1).max_connections, 512);
        assert_eq!(ApiLimits::fit(&host, 1024, 2).max_connections, 384);
        host.api_max_connections = NonZeroU32::new(5000).expect("not zero");
        assert_eq!(ApiLimits::fit(&host, 1024, 1).max_connections, 768);
        // Never none, even under an absurd limit.
        assert_eq!(ApiLimits::fit(&host, 100, 2).max_connections, 1);
    }
}
