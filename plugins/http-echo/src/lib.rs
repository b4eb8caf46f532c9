//! `http-echo`: an example Balut plugin that is a real network service.
//!
//! It serves HTTP/1.1 with `std::net` (and `mio` to wait for connections): `GET /` answers
//! with the configured message, `GET /healthz` with "ok", `GET /count` with the number of
//! requests answered so far (plain text, say `1234`; any status counts, the 503s below do
//! not, nor does the `/count` request itself), anything else with 404 (or 405 for other
//! methods). Each connection gets its own thread, up to `max_connections`; beyond that it
//! answers 503. `stop` stops accepting at once, gives in-flight requests up to
//! `drain_timeout_ms` to finish, then joins every thread.
//!
//! Where it listens: on the socket named `http` if the host holds one for the container
//! (`[containers.NAME.listen] http = "127.0.0.1:8080"` or `"unix:/run/echo.sock"`; it logs
//! "listening on a socket the host holds"), else on `bind`:`port`, bound by itself. On a
//! socket the host holds, a hot reload overlaps: the new version starts on the same socket
//! beside the running one, and connections wait in the socket's backlog, never refused.
//!
//! State across a hot reload: the request count. `handover` gives it to the next version
//! (format version 1: the count as a little-endian `u64`), and the constructor continues
//! from what it is given; a format it does not know fails the constructor (the host then
//! keeps the running version).
//!
//! Config (the `config` table of the container's entry; all optional): `bind`
//! ("127.0.0.1"), `port` (8080; 0 = any free port), `drain_timeout_ms` (5000), `message`
//! ("hello from balut"), `max_connections` (64). `bind` and `port` are not used when the
//! host holds the socket.

#![forbid(unsafe_code)]

mod http;
mod server;

use std::net::TcpListener;
use std::time::Duration;

use balut_plugin_api::{
    Container, Context, Error, Handover, Health, Level, Listener, export_plugin,
};
use serde::Deserialize;

use crate::server::{Server, Settings};

/// The name of the socket the host may hold for this plugin (`[containers.NAME.listen]`).
const SOCKET: &str = "http";
/// The format of the state handed over on a hot reload: the request count, a
/// little-endian `u64`.
const STATE_VERSION: u32 = 1;

/// The container's config; every field has a default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Address to listen on.
    bind: String,
    /// Port to listen on; 0 picks any free port (the `listening` log line names it).
    port: u16,
    /// How long `stop` waits for in-flight requests before closing them.
    drain_timeout_ms: u64,
    /// The body of `GET /`.
    message: String,
    /// Connections served at once; more are answered with 503.
    max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            port: 8080,
            drain_timeout_ms: 5000,
            message: "hello from balut".into(),
            max_connections: 64,
        }
    }
}

struct HttpEcho {
    ctx: Context,
    config: Config,
    /// Requests answered before the running server (if any) started: by earlier servers
    /// of this instance and by the instances before it.
    counted: u64,
    server: Option<Server>,
}

impl HttpEcho {
    fn new(config: Config, ctx: Context) -> Result<Self, Error> {
        if config.max_connections == 0 {
            return Err(Error::msg("max_connections must be at least 1"));
        }
        let counted = match ctx.take_handover() {
            Some(state) => {
                let counted = read_count(&state)?;
                let count = counted.to_string();
                ctx.log(
                    Level::Info,
                    "continuing the request count handed over",
                    &[("count", &count)],
                );
                counted
            }
            None => 0,
        };
        Ok(Self {
            ctx,
            config,
            counted,
            server: None,
        })
    }

    /// Requests answered so far, by this instance and those before it.
    fn total(&self) -> u64 {
        self.server.as_ref().map_or(self.counted, Server::total)
    }

    /// The socket the host holds for us, or one of our own at `bind`:`port`; and whether
    /// the host holds it.
    fn listener(&self) -> Result<(server::Listener, bool), Error> {
        match self.ctx.listener(SOCKET) {
            Ok(Listener::Tcp(listener)) => return Ok((listener.into(), true)),
            Ok(Listener::Unix(listener)) => return Ok((listener.into(), true)),
            // The usual case: the host holds no socket for this container.
            Err(e) => self.ctx.log(
                Level::Debug,
                "binding a socket of its own",
                &[("reason", e.message())],
            ),
        }
        let Config { bind, port, .. } = &self.config;
        let listener = TcpListener::bind((bind.as_str(), *port))
            .map_err(|e| Error::msg(format!("cannot listen on {bind}:{port}: {e}")))?;
        Ok((listener.into(), false))
    }
}

/// The request count in state handed over by the previous instance.
fn read_count(state: &Handover) -> Result<u64, Error> {
    let bytes = state.expect_version(STATE_VERSION)?;
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
        Error::msg(format!(
            "state handed over in format version {STATE_VERSION} must be 8 bytes (the request count), not {}",
            bytes.len()
        ))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

impl Container for HttpEcho {
    fn start(&mut self) -> Result<(), Error> {
        if self.server.is_some() {
            return Ok(());
        }
        let (listener, held) = self.listener()?;
        let settings = Settings {
            message: self.config.message.as_str().into(),
            max_connections: self.config.max_connections,
            counted_before: self.counted,
        };
        let server = Server::start(listener, settings)?;
        let message = if held {
            "listening on a socket the host holds"
        } else {
            "listening"
        };
        self.ctx
            .log(Level::Info, message, &[("addr", server.addr())]);
        self.server = Some(server);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let stats = server.stop(Duration::from_millis(self.config.drain_timeout_ms));
        self.counted = self.counted.saturating_add(stats.served);
        self.ctx.log(
            Level::Info,
            "stopped",
            &[
                ("requests", &stats.served.to_string()),
                ("count", &self.counted.to_string()),
                ("rejected", &stats.rejected.to_string()),
                ("closed_by_force", &stats.forced_closed.to_string()),
            ],
        );
        if stats.acceptor_panicked {
            return Err(Error::msg("the accept thread had panicked"));
        }
        Ok(())
    }

    fn health(&self) -> Health {
        match &self.server {
            Some(server) if server.is_accepting() => Health::Healthy,
            Some(_) => Health::unhealthy("the accept thread has died"),
            None => Health::unhealthy("not running"),
        }
    }

    /// The request count, to continue from in the next version. During an overlapping
    /// reload this instance serves on for a moment: what it answers then is not counted
    /// by the next one.
    fn handover(&mut self) -> Option<Handover> {
        let total = self.total();
        self.ctx.log(
            Level::Info,
            "handing the request count over",
            &[("count", &total.to_string())],
        );
        Some(Handover::new(STATE_VERSION, total.to_le_bytes().to_vec()))
    }
}

impl Drop for HttpEcho {
    /// A safety net: if the host drops the container without a successful `stop`, still
    /// join every thread so the library can be unloaded.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

export_plugin!(name: "http-echo", version: env!("CARGO_PKG_VERSION"), constructor: HttpEcho::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_version_1_only() {
        let state = Handover::new(1, 1234u64.to_le_bytes().to_vec());
        assert_eq!(read_count(&state).unwrap(), 1234);
        let e = read_count(&Handover::new(2, vec![0; 8])).unwrap_err();
        assert!(e.message().contains("does not understand"), "{e}");
        let e = read_count(&Handover::new(1, vec![0; 3])).unwrap_err();
        assert!(e.message().contains("must be 8 bytes"), "{e}");
    }

    /// `GET path` on `addr`: the whole response.
    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// The life cycle through the export glue, on a socket the test host holds: it serves,
    /// counts, hands the count over while still serving (as in an overlapping reload), and
    /// the next instance goes on from it on the same socket.
    #[test]
    fn life_cycle_on_a_held_socket_hands_the_count_over() {
        use balut_plugin_api::testing::{Lifecycle, Step, TestHost, json};

        let host = TestHost::new("web");
        let addr = host.bind_tcp(SOCKET).unwrap();
        let report = Lifecycle::new(HttpEcho::new)
            .host(host.clone())
            .config(json!({ "message": "hi", "drain_timeout_ms": 1000 }))
            .while_running(|running| {
                assert!(
                    running
                        .host()
                        .logged("listening on a socket the host holds")
                );
                assert!(get(addr, "/").ends_with("\r\n\r\nhi"));
                assert!(get(addr, "/").ends_with("\r\n\r\nhi"));
                assert!(get(addr, "/count").ends_with("\r\n\r\n2"));
                Ok(())
            })
            .run();
        report.assert_ok();
        let order: Vec<Step> = report.steps().iter().map(|s| s.step).collect();
        assert_eq!(
            order,
            [
                Step::CheckConfig,
                Step::New,
                Step::Start,
                Step::Ready,
                Step::Health,
                Step::WhileRunning,
                Step::Handover,
                Step::Stop,
                Step::Drop
            ]
        );
        // Two for `/`, and the `/count` request, which counts once answered.
        let state = report.handover().unwrap().clone();
        assert_eq!(read_count(&state).unwrap(), 3);

        // The next version, on the same socket, with the count handed over.
        let next = TestHost::new("web");
        next.hold_tcp(
            SOCKET,
            host.context().listener(SOCKET).unwrap().into_tcp().unwrap(),
        );
        next.set_handover(state);
        let report = Lifecycle::new(HttpEcho::new)
            .host(next)
            .while_running(|_| {
                assert!(get(addr, "/count").ends_with("\r\n\r\n3"));
                Ok(())
            })
            .run();
        report.assert_ok();
        let continued = report
            .host()
            .find_log("continuing the request count")
            .unwrap();
        assert_eq!(continued.field("count"), Some("3"));
    }

    #[test]
    fn life_cycle_on_its_own_port_and_refused_configs() {
        use balut_plugin_api::testing::{Lifecycle, Step, json};

        let report = Lifecycle::new(HttpEcho::new)
            .config(json!({ "port": 0 }))
            .while_running(|running| {
                let line = running.host().find_log("listening").unwrap();
                let addr = line.field("addr").unwrap().parse().unwrap();
                assert!(get(addr, "/").ends_with("hello from balut"));
                Ok(())
            })
            .run();
        report.assert_ok();

        let report = Lifecycle::new(HttpEcho::new)
            .config(json!({ "max_connections": 0 }))
            .run();
        let failed = report.failure().unwrap();
        assert_eq!(failed.step, Step::New);
        assert_eq!(failed.error(), Some("max_connections must be at least 1"));
        let report = Lifecycle::new(HttpEcho::new)
            .config(json!({ "prot": 1 }))
            .run();
        let failed = report.failure().unwrap();
        assert_eq!(failed.step, Step::CheckConfig);
        assert!(
            failed.error().unwrap().starts_with("prot: unknown field"),
            "{report}"
        );
    }
}
