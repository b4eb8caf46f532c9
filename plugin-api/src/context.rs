//! The host context a container receives in its constructor.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;

use abi_stable::std_types::{RSlice, RStr, Tuple2};

use crate::container::{Error, Handover};
use crate::ffi::{FfiHostArc, FfiLevel, FfiListenerKind};

/// Log levels for [`Context::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for FfiLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Error => FfiLevel::Error,
            Level::Warn => FfiLevel::Warn,
            Level::Info => FfiLevel::Info,
            Level::Debug => FfiLevel::Debug,
            Level::Trace => FfiLevel::Trace,
        }
    }
}

/// The container's line to the host: logging, stop requests, readiness, failures and the
/// end of its work.
///
/// Cheap to clone and safe to move to the container's own threads. The host tags every line
/// with the container's name, so there is no need to repeat it.
///
/// `Context` is `Send` and `Sync` (asserted when this crate compiles): its host side is an
/// abi_stable trait object over a reference-counted handle whose trait requires both, and
/// every host implementation is lock-free or locks internally. Share it by reference
/// (`&Context` in an `Arc<...>` or a scoped thread) or clone it; either is fine from any
/// number of threads at once.
///
/// ```
/// # fn demo(ctx: &balut_plugin_api::Context) {
/// use balut_plugin_api::Level;
/// ctx.info("listening");
/// ctx.log(Level::Warn, "slow request", &[("path", "/"), ("ms", "1200")]);
/// if ctx.stop_requested() { /* wind down */ }
/// # }
/// ```
#[derive(Clone)]
pub struct Context {
    name: String,
    host: FfiHostArc,
}

/// `Context` may be used from several threads at once: a compile-time assertion, so a change
/// that made it `!Sync` (or `!Send`) fails this crate's build, not a plugin's.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Context>();
};

impl Context {
    pub(crate) fn new(name: String, host: FfiHostArc) -> Self {
        Self { name, host }
    }

    /// The container's instance name, as the host's config names it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Logs `message` with `key=value` fields into the host's log output.
    pub fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<Tuple2<RStr<'_>, RStr<'_>>> = fields
            .iter()
            .map(|(key, value)| Tuple2(RStr::from_str(key), RStr::from_str(value)))
            .collect();
        self.host.log(
            level.into(),
            RStr::from_str(message),
            RSlice::from_slice(&fields),
        );
    }

    /// Logs at error level.
    pub fn error(&self, message: &str) {
        self.log(Level::Error, message, &[]);
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message, &[]);
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message, &[]);
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message, &[]);
    }

    /// Reports the container ready (`true`) or not ready (`false`), like systemd's
    /// `READY=1`. By default a container is ready once `start` returns; call
    /// `set_ready(false)` in the constructor or in `start` to be ready only once you call
    /// `set_ready(true)`. Containers that require this one start only when it is ready.
    pub fn set_ready(&self, ready: bool) {
        self.host.set_ready(ready);
    }

    /// Reports that the container has failed, with the reason: the host acts at once (it
    /// stops the container and restarts it as its restart policy says).
    pub fn report_failure(&self, reason: &str) {
        self.host.report_failure(RStr::from_str(reason));
    }

    /// Reports that the container has finished its work, with a message saying how (say,
    /// "import done"): a clean end, not a failure. The host stops it (calls
    /// [`Container::stop`](crate::Container::stop), then drops it) and, with restart policy
    /// `always`, starts it again; otherwise it leaves it `stopped`. Call it once, from a
    /// thread of the container's own when its work is done (that thread is joined in `stop`
    /// like any other).
    ///
    /// Interface 1.2: on a host older than 1.2 it does nothing (the container keeps running
    /// until it is stopped); such hosts refuse plugins built for 1.2 anyway.
    pub fn report_finished(&self, message: &str) {
        self.host.report_finished(RStr::from_str(message));
    }

    /// The listening socket named `name` that the host holds for this container (its
    /// config's `[containers.NAME.listen]` table), bound before the container starts and
    /// kept open across restarts and reloads: take it in the constructor or in `start` and
    /// accept on it. Each call gives a new handle to the same socket; closing yours leaves
    /// the host's open. Interface 1.3.
    ///
    /// ```no_run
    /// # fn demo(ctx: &balut_plugin_api::Context) -> Result<(), balut_plugin_api::Error> {
    /// let listener = ctx.listener("http")?.into_tcp()?;
    /// # Ok(()) }
    /// ```
    pub fn listener(&self, name: &str) -> Result<Listener, Error> {
        let listener = self
            .host
            .listener(RStr::from_str(name))
            .into_result()
            .map_err(|message| Error::msg(message.into_string()))?;
        let kind = listener.kind;
        let fd = listener.into_owned_fd();
        Ok(match kind {
            FfiListenerKind::Tcp => Listener::Tcp(TcpListener::from(fd)),
            FfiListenerKind::Unix => Listener::Unix(UnixListener::from(fd)),
        })
    }

    /// The state the previous instance handed over on a hot reload
    /// ([`Container::handover`](crate::Container::handover)), once: later calls, and every
    /// call when nothing was handed over, give `None`. Interface 1.3.
    pub fn take_handover(&self) -> Option<Handover> {
        self.host
            .take_handover()
            .into_option()
            .map(|h| Handover::new(h.version, h.bytes.into_vec()))
    }

    /// Whether the host has asked this container to stop. Long-running work started by
    /// [`Container::start`](crate::Container::start) can poll this; `stop` is called as well.
    pub fn stop_requested(&self) -> bool {
        self.host.stop_requested()
    }
}

/// A listening socket the host holds for a container ([`Context::listener`]).
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// The TCP listener, or an error if the config made it a Unix socket.
    pub fn into_tcp(self) -> Result<TcpListener, Error> {
        match self {
            Self::Tcp(listener) => Ok(listener),
            Self::Unix(_) => Err(Error::msg(
                "the host holds a Unix socket here, not a TCP one",
            )),
        }
    }

    /// The Unix listener, or an error if the config made it a TCP socket.
    pub fn into_unix(self) -> Result<UnixListener, Error> {
        match self {
            Self::Unix(listener) => Ok(listener),
            Self::Tcp(_) => Err(Error::msg(
                "the host holds a TCP socket here, not a Unix one",
            )),
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
