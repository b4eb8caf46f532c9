//! The trait a plugin author implements, and its result types.

use std::fmt;

/// A long-running component the Balut host starts, checks and stops.
///
/// The host makes every call on a thread it owns for this container, one call at a time,
/// with a timeout. A panic in any method (or in `Drop`) is caught and reported as an error;
/// it never reaches the host.
///
/// Threads you spawn in [`start`](Container::start) must be joined in
/// [`stop`](Container::stop): a thread left running keeps the library loaded, and the host
/// reports it as not unloaded.
pub trait Container: Send + 'static {
    /// Starts the work and returns once the container is up (for a server: once it listens).
    ///
    /// If `start` fails (returns an error, panics or overruns its timeout), the host still
    /// requests a stop ([`Context::stop_requested`] turns true), calls
    /// [`stop`](Container::stop) and then drops the value, as it does after a successful
    /// start: so `stop` must cope with a half-started container (join only the threads that
    /// were spawned, close only what was opened). After a failed constructor there is no
    /// value, and nothing is called. Under process isolation, a container whose process
    /// ended (a crash, an `exit()`) gets no more calls at all.
    ///
    /// [`Context::stop_requested`]: crate::Context::stop_requested
    fn start(&mut self) -> Result<(), Error>;

    /// Stops the work gracefully and joins every thread `start` spawned.
    fn stop(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Reports whether the container is doing its job (the liveness probe: failing it
    /// several times in a row gets the container restarted). Called periodically; keep it
    /// fast.
    fn health(&self) -> Health {
        Health::Healthy
    }

    /// Reports whether the container can take work now (the readiness probe: failing it
    /// holds back the containers that require this one, without a restart). Interface 1.1.
    fn ready(&self) -> Health {
        Health::Healthy
    }

    /// The state to hand to the next instance when the host hot-reloads this container
    /// (a new version of the plugin file), or `None` to hand nothing over (the default).
    /// The new instance takes it in its constructor with [`Context::take_handover`].
    ///
    /// When the host overlaps the reload (the container's sockets are held by the host),
    /// this is called while the instance still serves, just before the new one is
    /// constructed: what changes after it is not handed over. Otherwise it is called after
    /// [`stop`](Container::stop). Interface 1.3.
    ///
    /// [`Context::take_handover`]: crate::Context::take_handover
    fn handover(&mut self) -> Option<Handover> {
        None
    }
}

/// State one instance hands the next on a hot reload: bytes only the plugin reads, and a
/// version number for their format, so a new version can refuse (or convert) state it does
/// not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub version: u32,
    pub bytes: Vec<u8>,
}

impl Handover {
    pub fn new(version: u32, bytes: Vec<u8>) -> Self {
        Self { version, bytes }
    }

    /// The bytes, if their format is `version`; else an error saying both versions, for
    /// the constructor to return: the reload then fails and (the old instance still holds
    /// the state) is rolled back.
    pub fn expect_version(&self, version: u32) -> Result<&[u8], Error> {
        if self.version == version {
            Ok(&self.bytes)
        } else {
            Err(Error::msg(format!(
                "state handed over in format version {}, which this version (reading {version}) does not understand",
                self.version
            )))
        }
    }
}

/// The result of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not doing its job, with the reason.
    Unhealthy(String),
}

impl Health {
    /// A failed check with its reason.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self::Unhealthy(reason.into())
    }
}

/// An error from a plugin, carried to the host as its message.
///
/// Any `std::error::Error` converts into it, so `?` works in [`Container`] methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message the host will show.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        // Keep the whole chain: "outer: inner: root".
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { message }
    }
}
