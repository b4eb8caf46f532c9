//! ureq over a Unix socket, through ureq's own transport extension point
//! (`ureq::unversioned::transport`): a [`Connector`] that ignores the URL's host and
//! connects to one socket path, and a [`Transport`] over that `UnixStream` (modelled on
//! ureq's `TcpTransport`). Requests use a dummy URL such as `http://localhost/v1/...`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

/// An agent whose every request goes to the socket at `path`, whatever the URL's host.
pub fn agent(path: &Path, config: Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        UnixConnector {
            path: path.to_owned(),
        },
        NoResolver,
    )
}

/// Why connecting to the socket at `path` failed, in words: what is (or is not) there.
pub fn explain(path: &Path, e: &io::Error) -> String {
    match std::fs::metadata(path) {
        Err(m) if m.kind() == io::ErrorKind::NotFound => "it does not exist".to_owned(),
        Ok(m) if !m.file_type().is_socket() => {
            let what = if m.is_dir() { "a folder" } else { "a file" };
            format!("it is {what}, not a socket")
        }
        _ => match e.kind() {
            io::ErrorKind::ConnectionRefused => {
                "nothing listens on it (connection refused; a stale socket?)".to_owned()
            }
            io::ErrorKind::PermissionDenied => {
                format!("{e} (the socket is owner-only: run as the host's user)")
            }
            _ => e.to_string(),
        },
    }
}

/// Connects every request to one socket path.
#[derive(Debug)]
struct UnixConnector {
    path: PathBuf,
}

impl Connector for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<UnixTransport>, ureq::Error> {
        let stream = UnixStream::connect(&self.path)?;
        let config = details.config;
        Ok(Some(UnixTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            timeout_read: None,
            timeout_write: None,
        }))
    }
}

/// No name lookup: the connector ignores the address anyway.
#[derive(Debug)]
struct NoResolver;

impl Resolver for NoResolver {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(SocketAddr::from(([127, 0, 0, 1], 80)));
        Ok(addrs)
    }
}

struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
    /// The timeouts last set on the socket, so they are set only when they change.
    timeout_read: Option<Duration>,
    timeout_write: Option<Duration>,
}

impl fmt::Debug for UnixTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// The timeout left (`None`: none), or a timeout error when it has run out.
fn time_left(timeout: NextTimeout) -> Result<Option<Duration>, ureq::Error> {
    if timeout.after.is_zero() {
        return Err(ureq::Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

/// Sets a socket timeout if it differs from the one last set.
fn update_timeout(
    previous: &mut Option<Duration>,
    timeout: Option<Duration>,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    if *previous != timeout {
        set(timeout)?;
        *previous = timeout;
    }
    Ok(())
}

/// An I/O error as ureq reports it: a socket timeout (`EAGAIN` on Unix) is a timeout.
fn io_error(e: io::Error, timeout: NextTimeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ureq::Error::Timeout(timeout.reason),
        _ => ureq::Error::Io(e),
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        let left = time_left(timeout)?;
        let stream = &self.stream;
        update_timeout(&mut self.timeout_write, left, |t| {
            stream.set_write_timeout(t)
        })?;
        let output = &self.buffers.output()[..amount];
        (&self.stream)
            .write_all(output)
            .map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        let left = time_left(timeout)?;
        let stream = &self.stream;
        update_timeout(&mut self.timeout_read, left, |t| stream.set_read_timeout(t))?;
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match (&self.stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => break result.map_err(|e| io_error(e, timeout))?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Whether a pooled connection is still usable: nothing to read and not closed.
    fn is_open(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0];
        let open = matches!(
            (&self.stream).read(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).is_ok() && open
    }
}
