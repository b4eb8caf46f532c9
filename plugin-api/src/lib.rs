//! Write container plugins for the Balut plugin host (`balut run`; its README, in the
//! repository this crate comes from, says how to run it, and `balut new NAME` writes a
//! plugin crate to start from).
//!
//! A plugin is a `cdylib` crate with one type that implements [`Container`] and one
//! [`export_plugin!`] line. Drop the built library (`lib<name>.so`) into the host's plugin
//! folder and `balut run` loads it, starts one container per configured instance, checks
//! its health and stops it on shutdown.
//!
//! ```toml
//! # Cargo.toml of a plugin
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! balut-plugin-api = { path = "/path/to/balut/plugin-api" }
//! serde = { version = "1", features = ["derive"] }
//!
//! [dev-dependencies]
//! balut-plugin-api = { path = "/path/to/balut/plugin-api", features = ["testing"] }
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
//! use std::thread::JoinHandle;
//! use std::time::Duration;
//!
//! use balut_plugin_api::{Container, Context, Error, Health, export_plugin};
//!
//! /// The container's config: the `config` table of its `[containers.NAME]` entry.
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default = "default_interval_ms")]
//!     interval_ms: u64,
//! }
//!
//! fn default_interval_ms() -> u64 { 1000 }
//!
//! struct Counter {
//!     ctx: Context,
//!     interval: Duration,
//!     ticks: Arc<AtomicU64>,
//!     running: Arc<AtomicBool>,
//!     worker: Option<JoinHandle<()>>,
//! }
//!
//! impl Counter {
//!     fn new(config: Config, ctx: Context) -> Result<Self, Error> {
//!         if config.interval_ms == 0 {
//!             return Err(Error::msg("interval_ms must be positive"));
//!         }
//!         Ok(Self {
//!             ctx,
//!             interval: Duration::from_millis(config.interval_ms),
//!             ticks: Arc::default(),
//!             running: Arc::default(),
//!             worker: None,
//!         })
//!     }
//! }
//!
//! impl Container for Counter {
//!     fn start(&mut self) -> Result<(), Error> {
//!         self.running.store(true, Ordering::SeqCst);
//!         let (ticks, running, interval) = (self.ticks.clone(), self.running.clone(), self.interval);
//!         self.worker = Some(std::thread::spawn(move || {
//!             while running.load(Ordering::SeqCst) {
//!                 ticks.fetch_add(1, Ordering::SeqCst);
//!                 std::thread::sleep(interval);
//!             }
//!         }));
//!         self.ctx.info("counting");
//!         Ok(())
//!     }
//!
//!     fn stop(&mut self) -> Result<(), Error> {
//!         self.running.store(false, Ordering::SeqCst);
//!         if let Some(worker) = self.worker.take() {
//!             // Always join what you spawned: a live thread keeps the library loaded.
//!             worker.join().map_err(|_| Error::msg("worker thread panicked"))?;
//!         }
//!         Ok(())
//!     }
//!
//!     fn health(&self) -> Health {
//!         if self.worker.as_ref().is_some_and(|w| !w.is_finished()) {
//!             Health::Healthy
//!         } else {
//!             Health::unhealthy("worker thread is not running")
//!         }
//!     }
//! }
//!
//! export_plugin!(name: "counter", version: env!("CARGO_PKG_VERSION"), constructor: Counter::new);
//! ```
//!
//! # What the host guarantees
//! - Every call into your container (constructor, `start`, `stop`, `health`, `Drop`) runs
//!   on a thread the host owns for it, one call at a time, under a timeout. A config check
//!   runs under a timeout on a short-lived thread of its own.
//! - A panic in any of them (or in `Config`'s `Deserialize`) is caught by the glue [`export_plugin!`] generates and reported
//!   as the container's error, with the panic message; the host and the other containers
//!   keep running. Build plugins with the default `panic = "unwind"`.
//! - Log through [`Context`]: a plugin has its own copy of `tracing`, so `tracing::info!`
//!   inside a plugin goes nowhere.
//!
//! # Health, readiness and failures
//! - [`Container::health`] is the liveness check: failing it several times in a row gets
//!   the container restarted (as the host's restart policy for it says).
//! - [`Container::ready`] is the readiness check: failing it marks the container not ready,
//!   which holds back the containers that require it, without a restart.
//! - A container is ready once `start` returns, unless it calls
//!   [`Context::set_ready`]`(false)` in its constructor or `start`; then it is ready when it
//!   calls `set_ready(true)` (say, once a connection is up). It may flip it at any time.
//! - [`Context::report_failure`] tells the host the container has failed: it is stopped and
//!   restarted at once, as its policy says.
//! - [`Context::report_finished`] tells the host the container has finished its work (a
//!   clean end, not a failure): it is stopped, and started again only under restart policy
//!   `always`; otherwise it stays `stopped`.
//! - `export_plugin!(..., requires: ["db"])` makes instances require a container named `db`
//!   unless their config says otherwise.
//!
//! # Config
//! The constructor's `Config` type is deserialized from the container's `config` table. The
//! host can also check a config without constructing anything (interface 1.2): only
//! `Config`'s `Deserialize` runs, and a refusal names the key path (`limits.max`, `items[2].name`) and serde's message. A config the constructor
//! refuses while deserializing is reported the same way (`"limits.max: invalid type: ..."`).
//! So put checks that need nothing but the config in `Config` (`#[serde(deny_unknown_fields)]`,
//! `deserialize_with`, `#[serde(try_from = ...)]`), and the rest in the constructor.
//!
//! How the config gets there: the host parses its TOML file (syntax errors there name the
//! file's line), turns the container's `config` table into JSON text, and the glue
//! [`export_plugin!`] generates deserializes `Config` from that JSON with `serde_json`. So
//! `Config` sees JSON's data model: TOML integers and floats arrive as JSON numbers,
//! strings, booleans, arrays and tables as such; a TOML date or time arrives as the `toml`
//! crate's private form (`{"$__toml_private_datetime": "1979-05-27T07:32:00Z"}`), so write
//! dates as strings in the config. A refusal names the key path within the `config` table, never a TOML line
//! (the plugin never sees the file) nor a JSON position (serde_json's " at line L column C"
//! is stripped): the host reports it as `containers.NAME.config.KEY.PATH: message`.
//! `balut check PLUGIN.so --config FILE` runs exactly this check for each instance.
//!
//! # Sockets the host holds, and state across a reload (interface 1.3)
//! A network service should not bind its own port: declare it in the host's config
//! (`[containers.web.listen] http = "127.0.0.1:8080"`) and take it with
//! [`Context::listener`]. The host keeps that socket open across restarts and reloads, so
//! no connection is refused while an instance changes, and it starts a new version beside
//! the old one on the same socket (both accept from it for a moment: use it the same way,
//! blocking or not, in every version, since that mode belongs to the socket, not to your
//! handle). To carry state to the next version, return it from
//! [`Container::handover`] with a format version, and take it in the constructor:
//!
//! ```
//! use balut_plugin_api::{Context, Error, Handover};
//!
//! const STATE: u32 = 1;
//!
//! fn restored(ctx: &Context) -> Result<u64, Error> {
//!     let Some(state) = ctx.take_handover() else { return Ok(0) };
//!     // An unknown format fails the constructor: the reload is rolled back and the old
//!     // instance keeps its state.
//!     let bytes: [u8; 8] = state.expect_version(STATE)?.try_into().map_err(Error::msg)?;
//!     Ok(u64::from_le_bytes(bytes))
//! }
//!
//! fn saved(count: u64) -> Handover {
//!     Handover::new(STATE, count.to_le_bytes().to_vec())
//! }
//! # let _ = (restored, saved);
//! ```
//!
//! # What the host expects
//! - `stop` joins every thread `start` spawned; the host unloads the library afterwards and
//!   reports a library that stays mapped.
//! - No `std::process::exit`, no aborts, no signal handlers: those end the host (unless the
//!   operator runs the container with `isolation = "process"`, where they end only its own
//!   process and the host restarts it).
//!
//! # Testing a plugin
//! With the cargo feature `testing` (turn it on in `[dev-dependencies]` only:
//! `balut-plugin-api = { path = "...", features = ["testing"] }`), the `testing` module
//! stands in for the host in unit tests: a `TestHost` records what a [`Context`] reports
//! (log lines with their fields, readiness, failures, finishes), requests a stop, lends
//! sockets and hands over state; `Lifecycle` runs a container through the glue
//! [`export_plugin!`] generates (config check, constructor, `start`, readiness, `health`,
//! `handover`, `stop`, drop) and reports each step's result and time.
//!
//! # Interface versions
//! The interface is versioned [`INTERFACE_MAJOR`]`.`[`INTERFACE_MINOR`], apart from this
//! crate's own semver version ([`CRATE_VERSION`]): a plugin is built for the interface of
//! the `balut-plugin-api` it compiles against, and the version is written into the library.
//! A host loads a plugin built for the same major and a minor no newer than its own (a host
//! of interface 1.3 loads plugins built for 1.0 to 1.3); it refuses others before running
//! any of their code, naming the file, the plugin, both versions and what to do (rebuild
//! against the host's `balut-plugin-api`, or upgrade the host for a newer plugin). A new
//! minor only appends (new trait methods with defaults, new `Context` methods), so
//! rebuilding against a newer crate of the same major needs no code change. The README's
//! "Versions and compatibility" has the policy and the table; `balut --version` prints the
//! interfaces a host loads, and `balut check PLUGIN.so` whether it would load a file.

mod container;
mod context;
mod declaration;
mod export;
#[doc(hidden)]
pub mod ffi;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use container::{Container, Error, Handover, Health};
pub use context::{Context, Level, Listener};

/// Major version of the plugin interface: bumped for any incompatible change.
pub const INTERFACE_MAJOR: u32 = 1;
/// Minor version of the plugin interface: bumped when items are appended.
///
/// - 1.0: the container (start, stop, health), logging, stop requests.
/// - 1.1: readiness (`Container::ready`, `Context::set_ready`), `Context::report_failure`,
///   default requirements (`requires:` in [`export_plugin!`]).
/// - 1.2: the host checks a config without constructing (generated by [`export_plugin!`];
///   refusals name the key path), `Context::report_finished`.
/// - 1.3: sockets the host holds for a container (`Context::listener`), state handed from
///   one instance to the next on a hot reload (`Container::handover`,
///   `Context::take_handover`).
pub const INTERFACE_MINOR: u32 = 3;
/// This crate's version (`balut-plugin-api`, semver), which the host names in its
/// interface-mismatch error: see "Interface versions" above.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The interface version as abi_stable's version strings carry it.
#[doc(hidden)]
pub const INTERFACE_VERSION_STRING: &str = "1.3.0";

/// Items the export macro and the host use. Not part of the plugin author's API.
#[doc(hidden)]
pub mod __private {
    pub use crate::declaration::{
        DECLARATION_MAGIC, DECLARATION_SIZE, DECLARATION_SYMBOL, DeclarationError,
        PluginDeclaration,
    };
    pub use crate::export::{check_config, new_container};
    pub use crate::ffi::{
        FfiConfigError, FfiContainerBox, FfiError, FfiHostArc, PluginMod, PluginModRef,
    };
    pub use abi_stable;
    pub use abi_stable::std_types::{RResult, RSlice, RStr};
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_header_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn interface_version_string_matches_constants() {
        assert_eq!(
            super::INTERFACE_VERSION_STRING,
            format!("{}.{}.0", super::INTERFACE_MAJOR, super::INTERFACE_MINOR)
        );
    }
}
