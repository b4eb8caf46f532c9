//! The accept loop and one thread per connection, with a bounded, graceful stop.
//!
//! Nothing here knows about Balut, so it can be tested with plain sockets.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{self, Response};

/// How often the accept loop checks the stop flag, and the drain checks for finished threads.
const POLL: Duration = Duration::from_millis(20);
/// How long a connection may wait for the client to send or receive.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept thread spends on a connection it turns away.
const REJECT_WAIT: Duration = Duration::from_millis(100);

/// What the server answers with, and how many connections it serves at once.
pub struct Settings {
    pub message: Arc<str>,
    pub max_connections: usize,
}

/// What happened while the server ran, reported by [`Server::stop`].
#[derive(Debug)]
pub struct Stats {
    /// Requests answered by a connection thread (any status).
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
    socket: TcpStream,
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
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl Server {
    /// Starts serving on a bound listener.
    pub fn start(listener: TcpListener, settings: Settings) -> io::Result<Self> {
        // Non-blocking, so the accept loop can notice the stop flag.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = thread::Builder::new()
            .name("http-echo-accept".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&listener, &shared, &settings)
            })?;
        Ok(Self {
            addr,
            shared,
            acceptor,
        })
    }

    /// The address the server listens on (with the actual port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the accept thread is still running.
    pub fn is_accepting(&self) -> bool {
        !self.acceptor.is_finished()
    }

    /// Stops accepting at once, lets in-flight connections finish for up to `drain_timeout`,
    /// closes the rest, and joins every thread.
    pub fn stop(self, drain_timeout: Duration) -> Stats {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The listener is dropped when the accept loop returns: new connections are refused.
        let acceptor_panicked = self.acceptor.join().is_err();

        let deadline = Instant::now() + drain_timeout;
        while Instant::now() < deadline && open_connections(&self.shared) > 0 {
            thread::sleep(POLL);
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

fn open_connections(shared: &Shared) -> usize {
    let connections = shared.connections();
    connections
        .iter()
        .filter(|c| !c.thread.is_finished())
        .count()
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, settings: &Settings) {
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                // A failed connection only affects that client.
                let _ = dispatch(stream, shared, settings);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            // E.g. out of file descriptors: back off and try again.
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Hands a new connection to its own thread, or answers 503 when all slots are taken.
fn dispatch(stream: TcpStream, shared: &Arc<Shared>, settings: &Settings) -> io::Result<()> {
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

    // Some platforms hand out accepted sockets in the listener's non-blocking mode.
    stream.set_nonblocking(false)?;
    let socket = stream.try_clone()?;
    let message = Arc::clone(&settings.message);
    let counters = Arc::clone(shared);
    let thread = thread::Builder::new()
        .name("http-echo-conn".into())
        .spawn(move || {
            if serve(stream, &message).is_ok() {
                counters.served.fetch_add(1, Ordering::SeqCst);
            }
        })?;
    connections.push(Connection { socket, thread });
    Ok(())
}

/// Answers one request and closes the connection.
fn serve(mut stream: TcpStream, message: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let response = match http::read_head(&mut stream) {
        Ok(head) => http::respond(&head, message),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Response::bad_request(),
        Err(e) => return Err(e),
    };
    stream.write_all(&response.to_bytes())?;
    stream.shutdown(Shutdown::Write)
}

/// Answers 503 from the accept thread. It waits a moment for the request first: closing a
/// socket with an unread request resets the connection, and the client would lose the 503.
fn reject_busy(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REJECT_WAIT))?;
    stream.set_write_timeout(Some(REJECT_WAIT))?;
    let _ = http::read_head(&mut stream);
    stream.write_all(&Response::busy().to_bytes())?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn start(max_connections: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = Settings {
            message: "hello".into(),
            max_connections,
        };
        Server::start(listener, settings).unwrap()
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_and_stops() {
        let server = start(4);
        let addr = server.addr();
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
        let server = start(1);
        // Takes the only slot and never sends a request.
        let _idle = TcpStream::connect(server.addr()).unwrap();
        assert!(get(server.addr(), "/").starts_with("HTTP/1.1 503 Service Unavailable\r\n"));

        let started = Instant::now();
        let stats = server.stop(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.forced_closed, 1);
        assert_eq!(stats.served, 0);
    }
}
