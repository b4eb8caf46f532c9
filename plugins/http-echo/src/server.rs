//! The accept loop and one thread per connection, with a bounded, graceful stop.
//!
//! The accept thread sleeps in `epoll` (through `mio`) until a connection is waiting or
//! [`Server::stop`] wakes it, so a connection is accepted at once and an idle server costs
//! nothing. The listener stays non-blocking: during an overlapping hot reload the old and the
//! new instance accept on one socket the host holds (one open file description, so one
//! `O_NONBLOCK` flag), and whichever loses the race for a connection just sees `WouldBlock`.
//!
//! Nothing here knows about Balut, so it can be tested with plain sockets.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::http::{self, Response};

/// How often the drain in [`Server::stop`] checks for finished connection threads.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The longest the accept thread sleeps without a wake-up: a safety net only, as `stop`
/// wakes it at once.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// How long the accept thread backs off after an accept error (say, out of descriptors).
const ERROR_BACKOFF: Duration = Duration::from_millis(20);
/// How long a connection may wait for the client to send or receive.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept thread spends on a connection it turns away.
const REJECT_WAIT: Duration = Duration::from_millis(100);

/// The readiness event of the listener, and of a wake-up from `stop`.
const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);

/// A listening socket: TCP, or a Unix stream socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Where it listens, for the log: `127.0.0.1:8080` or `unix:/run/echo.sock`.
    pub fn describe(&self) -> io::Result<String> {
        Ok(match self {
            Self::Tcp(listener) => listener.local_addr()?.to_string(),
            Self::Unix(listener) => match listener.local_addr()?.as_pathname() {
                Some(path) => format!("unix:{}", path.display()),
                None => "unix:(unnamed)".to_owned(),
            },
        })
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Self::Tcp(listener) => listener.set_nonblocking(nonblocking),
            Self::Unix(listener) => listener.set_nonblocking(nonblocking),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Self::Tcp(listener) => Stream::Tcp(listener.accept()?.0),
            Self::Unix(listener) => Stream::Unix(listener.accept()?.0),
        })
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Self::Tcp(listener) => listener.as_raw_fd(),
            Self::Unix(listener) => listener.as_raw_fd(),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

impl From<UnixListener> for Listener {
    fn from(listener: UnixListener) -> Self {
        Self::Unix(listener)
    }
}

/// An accepted connection.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(stream) => Self::Tcp(stream.try_clone()?),
            Self::Unix(stream) => Self::Unix(stream.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.shutdown(how),
            Self::Unix(stream) => stream.shutdown(how),
        }
    }

    /// Blocking, with a timeout for every read and write.
    fn set_blocking_with_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))
            }
            Self::Unix(stream) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.read(buf),
            Self::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.write(buf),
            Self::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.flush(),
            Self::Unix(stream) => stream.flush(),
        }
    }
}

/// What the server answers with, and how many connections it serves at once.
pub struct Settings {
    pub message: Arc<str>,
    pub max_connections: usize,
    /// Requests answered before this server started (by earlier instances): the count
    /// `GET /count` continues from.
    pub counted_before: u64,
}

/// What happened while the server ran, reported by [`Server::stop`].
#[derive(Debug)]
pub struct Stats {
    /// Requests answered by a connection thread (any status; the response written).
    pub served: u64,
    /// Connections turned away with 503 because all slots were taken.
    pub rejected: u64,
    /// Connections still open when the drain timed out, closed by force.
    pub forced_closed: usize,
    /// Whether the accept thread had panicked.
    pub acceptor_panicked: bool,
}

/// A connection being served: its thread, and a clone of its socket to close it by force.
struct Connection {
    socket: Stream,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    served: AtomicU64,
    rejected: AtomicU64,
    connections: Mutex<Vec<Connection>>,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, Vec<Connection>> {
        // A panicking connection thread never holds this lock, but be safe anyway.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running server. Call [`Server::stop`] to shut it down and join all of its threads.
pub struct Server {
    addr: String,
    counted_before: u64,
    shared: Arc<Shared>,
    waker: Waker,
    acceptor: JoinHandle<()>,
}

impl Server {
    /// Starts serving on a bound, listening socket.
    pub fn start(listener: impl Into<Listener>, settings: Settings) -> io::Result<Self> {
        let listener = listener.into();
        // Non-blocking, so the accept loop never blocks in `accept` (another instance on
        // the same socket may take the connection it was woken for).
        listener.set_nonblocking(true)?;
        let addr = listener.describe()?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&listener.raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let counted_before = settings.counted_before;
        let shared = Arc::new(Shared::default());
        let acceptor = thread::Builder::new()
            .name("http-echo-accept".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(poll, &listener, &shared, &settings)
            })?;
        Ok(Self {
            addr,
            counted_before,
            shared,
            waker,
            acceptor,
        })
    }

    /// Where the server listens (with the actual port when 0 was asked for), for the log.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Requests answered so far, by this server and before it (`GET /count`).
    pub fn total(&self) -> u64 {
        total(self.counted_before, &self.shared)
    }

    /// Whether the accept thread is still running.
    pub fn is_accepting(&self) -> bool {
        !self.acceptor.is_finished()
    }

    /// Stops accepting at once, lets in-flight connections finish for up to `drain_timeout`,
    /// closes the rest, and joins every thread.
    pub fn stop(self, drain_timeout: Duration) -> Stats {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // If the wake-up fails, the accept thread still sees the flag within IDLE_WAIT.
        let _ = self.waker.wake();
        // The listener is dropped when the accept loop returns: unless the host holds the
        // socket, new connections are refused.
        let acceptor_panicked = self.acceptor.join().is_err();

        let deadline = Instant::now() + drain_timeout;
        while Instant::now() < deadline && open_connections(&self.shared) > 0 {
            thread::sleep(DRAIN_POLL);
        }

        // Taken after the acceptor is joined, so no connection can be added any more.
        let connections = std::mem::take(&mut *self.shared.connections());
        let mut forced_closed = 0;
        for connection in &connections {
            if !connection.thread.is_finished() {
                // Wakes the thread from a blocked read or write, so joining it is quick.
                let _ = connection.socket.shutdown(Shutdown::Both);
                forced_closed += 1;
            }
        }
        for connection in connections {
            // A panic in a connection thread already ended that connection; nothing to add.
            let _ = connection.thread.join();
        }

        Stats {
            served: self.shared.served.load(Ordering::SeqCst),
            rejected: self.shared.rejected.load(Ordering::SeqCst),
            forced_closed,
            acceptor_panicked,
        }
    }
}

fn total(counted_before: u64, shared: &Shared) -> u64 {
    counted_before.saturating_add(shared.served.load(Ordering::SeqCst))
}

fn open_connections(shared: &Shared) -> usize {
    let connections = shared.connections();
    connections
        .iter()
        .filter(|c| !c.thread.is_finished())
        .count()
}

/// Accepts every waiting connection, then sleeps until the listener is readable again or
/// `stop` wakes it. `mio` reports readiness edge-triggered: a wake-up comes only for a new
/// connection, so the loop accepts until `WouldBlock` before it sleeps, and after an error
/// (a connection may still wait) it sleeps only briefly.
fn accept_loop(mut poll: Poll, listener: &Listener, shared: &Arc<Shared>, settings: &Settings) {
    let mut events = Events::with_capacity(4);
    while !shared.stopping.load(Ordering::SeqCst) {
        let mut wait = IDLE_WAIT;
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            match listener.accept() {
                Ok(stream) => {
                    // A failed connection only affects that client.
                    let _ = dispatch(stream, shared, settings);
                }
                // None waiting (or another instance on the same socket took it).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // E.g. out of file descriptors: back off and try again.
                Err(_) => {
                    wait = ERROR_BACKOFF;
                    break;
                }
            }
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Should not happen; do not spin if it does.
            Err(_) => thread::sleep(ERROR_BACKOFF),
        }
    }
}

/// Hands a new connection to its own thread, or answers 503 when all slots are taken.
fn dispatch(stream: Stream, shared: &Arc<Shared>, settings: &Settings) -> io::Result<()> {
    let mut connections = shared.connections();
    // Join the threads that are done, freeing their slots.
    let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *connections)
        .into_iter()
        .partition(|c| c.thread.is_finished());
    *connections = running;
    for connection in done {
        let _ = connection.thread.join();
    }

    if connections.len() >= settings.max_connections {
        drop(connections);
        shared.rejected.fetch_add(1, Ordering::SeqCst);
        return reject_busy(stream);
    }

    // Accepted sockets do not share the listener's mode, but some platforms hand them out
    // non-blocking: make sure.
    stream.set_blocking_with_timeout(IO_TIMEOUT)?;
    let socket = stream.try_clone()?;
    let message = Arc::clone(&settings.message);
    let counted_before = settings.counted_before;
    let counters = Arc::clone(shared);
    let thread = thread::Builder::new()
        .name("http-echo-conn".into())
        .spawn(move || {
            // A failed connection only affects that client.
            let _ = serve(stream, &message, counted_before, &counters);
        })?;
    connections.push(Connection { socket, thread });
    Ok(())
}

/// Answers one request and closes the connection. The request counts as answered once the
/// response is written, before the client can see the connection end: a `GET /count` sent
/// after an answer arrived includes it.
fn serve(
    mut stream: Stream,
    message: &str,
    counted_before: u64,
    shared: &Shared,
) -> io::Result<()> {
    let response = match http::read_head(&mut stream) {
        Ok(head) => http::respond(&head, message, || total(counted_before, shared)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Response::bad_request(),
        Err(e) => return Err(e),
    };
    stream.write_all(&response.to_bytes())?;
    shared.served.fetch_add(1, Ordering::SeqCst);
    stream.shutdown(Shutdown::Write)
}

/// Answers 503 from the accept thread. It waits a moment for the request first: closing a
/// socket with an unread request resets the connection, and the client would lose the 503.
fn reject_busy(mut stream: Stream) -> io::Result<()> {
    stream.set_blocking_with_timeout(REJECT_WAIT)?;
    let _ = http::read_head(&mut stream);
    stream.write_all(&Response::busy().to_bytes())?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn settings(max_connections: usize, counted_before: u64) -> Settings {
        Settings {
            message: "hello".into(),
            max_connections,
            counted_before,
        }
    }

    fn start(max_connections: usize) -> (Server, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::start(listener, settings(max_connections, 0)).unwrap();
        (server, addr)
    }

    fn exchange(mut stream: impl Read + Write, path: &str) -> String {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        exchange(TcpStream::connect(addr).unwrap(), path)
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").unwrap().1
    }

    #[test]
    fn serves_and_stops() {
        let (server, addr) = start(4);
        assert_eq!(server.addr(), addr.to_string());
        assert!(get(addr, "/").ends_with("\r\n\r\nhello"));
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get(addr, "/missing").starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(server.is_accepting());

        let stats = server.stop(Duration::from_secs(5));
        assert_eq!(stats.served, 3);
        assert_eq!(stats.forced_closed, 0);
        assert!(!stats.acceptor_panicked);
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn rejects_over_capacity_and_closes_idle_connections_on_stop() {
        let (server, addr) = start(1);
        // Takes the only slot and never sends a request.
        let _idle = TcpStream::connect(addr).unwrap();
        assert!(get(addr, "/").starts_with("HTTP/1.1 503 Service Unavailable\r\n"));

        let started = Instant::now();
        let stats = server.stop(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.forced_closed, 1);
        assert_eq!(stats.served, 0);
    }

    #[test]
    fn counts_requests_on_from_what_was_counted_before() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::start(listener, settings(4, 40)).unwrap();
        assert_eq!(body(&get(addr, "/count")), "40", "nothing answered yet");
        get(addr, "/");
        get(addr, "/nope");
        assert_eq!(body(&get(addr, "/count")), "43");
        assert_eq!(server.total(), 44);
        assert_eq!(server.stop(Duration::from_secs(5)).served, 4);
    }

    #[test]
    fn serves_on_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("http-echo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let server = Server::start(UnixListener::bind(&path).unwrap(), settings(4, 0)).unwrap();
        assert_eq!(server.addr(), format!("unix:{}", path.display()));
        let response = exchange(UnixStream::connect(&path).unwrap(), "/");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("hello"), "{response}");
        assert_eq!(server.stop(Duration::from_secs(5)).served, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two servers on one socket, as the old and the new instance during an overlapping
    /// reload: both answer, and once one stops the other takes every connection.
    #[test]
    fn two_servers_share_one_socket_and_one_stops_without_a_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let old = Server::start(listener.try_clone().unwrap(), settings(8, 0)).unwrap();
        let new = Server::start(listener.try_clone().unwrap(), settings(8, 0)).unwrap();
        for _ in 0..20 {
            assert!(get(addr, "/").starts_with("HTTP/1.1 200 OK\r\n"));
        }
        let old_stats = old.stop(Duration::from_secs(5));
        for _ in 0..20 {
            assert!(get(addr, "/").starts_with("HTTP/1.1 200 OK\r\n"));
        }
        let new_stats = new.stop(Duration::from_secs(5));
        assert_eq!(old_stats.served + new_stats.served, 40);
        assert!(new_stats.served >= 20);
        // `listener` (the host's copy, here) keeps the socket open: connections queue.
        let queued = TcpStream::connect(addr);
        assert!(queued.is_ok(), "{queued:?}");
    }

    /// The accept thread sleeps until a connection comes, and `stop` wakes it at once.
    #[test]
    fn an_idle_server_stops_promptly() {
        let (server, _addr) = start(4);
        thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        server.stop(Duration::from_secs(5));
        // IDLE_WAIT (250 ms) would be the bound without the wake-up; allow for a busy CI.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
