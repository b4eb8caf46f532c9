//! `http-echo`: an example Balut plugin that is a real network service.
//!
//! It serves HTTP/1.1 with `std::net` only: `GET /` answers with the configured message,
//! `GET /healthz` with "ok", anything else with 404 (or 405 for other methods). Each
//! connection gets its own thread, up to `max_connections`; beyond that it answers 503.
//! `stop` stops accepting at once, gives in-flight requests up to `drain_timeout_ms` to
//! finish, then joins every thread.
//!
//! Config (the `config` table of the container's entry; all optional): `bind`
//! ("127.0.0.1"), `port` (8080; 0 = any free port), `drain_timeout_ms` (5000), `message`
//! ("hello from balut"), `max_connections` (64).

#![forbid(unsafe_code)]

mod http;
mod server;

use std::net::TcpListener;
use std::time::Duration;

use balut_plugin_api::{Container, Context, Error, Health, Level, export_plugin};
use serde::Deserialize;

use crate::server::{Server, Settings};

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
    server: Option<Server>,
}

impl HttpEcho {
    fn new(config: Config, ctx: Context) -> Result<Self, Error> {
        if config.max_connections == 0 {
            return Err(Error::msg("max_connections must be at least 1"));
        }
        Ok(Self {
            ctx,
            config,
            server: None,
        })
    }
}

impl Container for HttpEcho {
    fn start(&mut self) -> Result<(), Error> {
        if self.server.is_some() {
            return Ok(());
        }
        let Config { bind, port, .. } = &self.config;
        let listener = TcpListener::bind((bind.as_str(), *port))
            .map_err(|e| Error::msg(format!("cannot listen on {bind}:{port}: {e}")))?;
        let settings = Settings {
            message: self.config.message.as_str().into(),
            max_connections: self.config.max_connections,
        };
        let server = Server::start(listener, settings)?;
        let addr = server.addr().to_string();
        self.ctx.log(Level::Info, "listening", &[("addr", &addr)]);
        self.server = Some(server);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let stats = server.stop(Duration::from_millis(self.config.drain_timeout_ms));
        self.ctx.log(
            Level::Info,
            "stopped",
            &[
                ("requests", &stats.served.to_string()),
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
}

impl Drop for HttpEcho {
    /// A safety net: if the host drops the container without a successful `stop`, still
    /// join every thread so the library can be unloaded.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

export_plugin!(name: "http-echo", version: env!("CARGO_PKG_VERSION"), constructor: HttpEcho::new);
