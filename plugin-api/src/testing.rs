//! Unit tests for plugins, without a host (cargo feature `testing`).
//!
//! Turn the feature on for tests only, so the built plugin does not carry this module:
//!
//! ```toml
//! [dependencies]
//! balut-plugin-api = { path = "/path/to/balut/plugin-api" }
//!
//! [dev-dependencies]
//! balut-plugin-api = { path = "/path/to/balut/plugin-api", features = ["testing"] }
//! ```
//!
//! Two levels:
//!
//! - [`TestHost`] stands in for the host behind a [`Context`]: it records every log line
//!   (with its level and fields), readiness, reported failures and finishes; a test asks
//!   the container to stop ([`TestHost::request_stop`], so `ctx.stop_requested()` turns
//!   true), lends it listening sockets by name ([`TestHost::hold_tcp`],
//!   [`TestHost::bind_tcp`], [`TestHost::hold_unix`]) for [`Context::listener`], and gives
//!   it state to take with [`Context::take_handover`] ([`TestHost::set_handover`]). Build
//!   your container with [`TestHost::context`] and call its methods directly.
//! - [`Lifecycle`] runs a container's whole life through the same glue
//!   [`export_plugin!`](crate::export_plugin) generates, in the order the host uses:
//!   config check, constructor (from a JSON value, as the host passes the `config` table),
//!   `start`, readiness, `health`, your own checks while it runs, `handover`, `stop`, drop.
//!   Every call runs on a thread of its own under a timeout, panics are caught as the host
//!   catches them, and the [`Report`] gives each step's result and how long it took.
//!
//! ```
//! use balut_plugin_api::testing::{Lifecycle, Step, TestHost, json};
//! use balut_plugin_api::{Container, Context, Error, Level};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     greeting: String,
//! }
//!
//! struct Hello {
//!     ctx: Context,
//!     greeting: String,
//! }
//!
//! impl Hello {
//!     fn new(config: Config, ctx: Context) -> Result<Self, Error> {
//!         Ok(Self { ctx, greeting: config.greeting })
//!     }
//! }
//!
//! impl Container for Hello {
//!     fn start(&mut self) -> Result<(), Error> {
//!         self.ctx.log(Level::Info, "started", &[("greeting", &self.greeting)]);
//!         Ok(())
//!     }
//! }
//!
//! // The whole life cycle, through the export glue.
//! let report = Lifecycle::new(Hello::new).config(json!({ "greeting": "hi" })).run();
//! report.assert_ok();
//! let line = report.host().find_log("started").expect("start logged");
//! assert_eq!(line.level, Level::Info);
//! assert_eq!(line.field("greeting"), Some("hi"));
//!
//! // A config the type refuses fails the config check, naming the key.
//! let report = Lifecycle::new(Hello::new).config(json!({ "greting": "hi" })).run();
//! let failed = report.failure().expect("refused");
//! assert_eq!(failed.step, Step::CheckConfig);
//! assert!(failed.error().unwrap_or_default().starts_with("greting: unknown field"));
//!
//! // Or call it directly, with a context from a test host.
//! let host = TestHost::new("hello");
//! let mut hello = Hello::new(Config { greeting: "hey".into() }, host.context())?;
//! hello.start()?;
//! assert!(host.logged("started"));
//! # Ok::<(), Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{
    RArc, RErr, RNone, ROk, ROption, RResult, RSlice, RStr, RString, Tuple2,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use serde_json::{Value, json};

use crate::container::{Container, Error, Handover, Health};
use crate::context::{Context, Level};
use crate::export::{check_config_of, new_container};
use crate::ffi::{
    FfiContainerBox, FfiError, FfiErrorKind, FfiHandover, FfiHealth, FfiHealthStatus, FfiHost,
    FfiHost_TO, FfiLevel, FfiListener, FfiListenerKind,
};

/// How long a [`Lifecycle`] waits for each call (and for `set_ready(true)`) by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One line a container logged through its [`Context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    /// The `key=value` fields, in the order given.
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    /// The value of the field `key`, if the line has it.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.level, self.message)?;
        for (key, value) in &self.fields {
            write!(f, " {key}={value:?}")?;
        }
        Ok(())
    }
}

/// A socket lent to the container: the test's own listener, duplicated on each request.
enum Held {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// What the container told the host, and what the test holds for it.
#[derive(Default)]
struct Record {
    logs: Vec<LogLine>,
    readiness: Vec<bool>,
    failures: Vec<String>,
    finished: Vec<String>,
    stop_requested: bool,
    listeners: HashMap<String, Held>,
    handover: Option<Handover>,
}

struct Shared {
    name: String,
    record: Mutex<Record>,
    /// Notified on every change to `record`, for [`TestHost::wait_for`].
    changed: Condvar,
    /// Whether log lines are also printed to stderr (shown by `cargo test` on failure).
    echo: bool,
}

/// A stand-in for the host behind a [`Context`]: see the [module docs](self).
///
/// Cheap to clone; the clones share one record.
#[derive(Clone)]
pub struct TestHost {
    shared: Arc<Shared>,
}

impl fmt::Debug for TestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHost")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new("test")
    }
}

impl TestHost {
    /// A host for a container named `name` ([`Context::name`]). Log lines are also printed
    /// to stderr, which `cargo test` shows for a failing test.
    pub fn new(name: &str) -> Self {
        Self::build(name, true)
    }

    /// Like [`new`](Self::new), without printing log lines.
    pub fn quiet(name: &str) -> Self {
        Self::build(name, false)
    }

    fn build(name: &str, echo: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                record: Mutex::new(Record::default()),
                changed: Condvar::new(),
                echo,
            }),
        }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A context for a container of this host, as its constructor gets one.
    pub fn context(&self) -> Context {
        Context::new(self.shared.name.clone(), self.ffi())
    }

    fn ffi(&self) -> crate::ffi::FfiHostArc {
        FfiHost_TO::from_ptr(
            RArc::new(Bridge {
                shared: Arc::clone(&self.shared),
            }),
            TD_Opaque,
        )
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.shared.lock()
    }

    /// Asks the container to stop: `ctx.stop_requested()` is true from now on. (A
    /// [`Lifecycle`] does this before it calls `stop`, as the host does.)
    pub fn request_stop(&self) {
        self.shared.change(|r| r.stop_requested = true);
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.record().stop_requested
    }

    /// Lends `listener` to the container as the socket named `name`
    /// (`ctx.listener(name)`), as the host lends one its config's `listen` table declares.
    pub fn hold_tcp(&self, name: &str, listener: TcpListener) {
        self.shared.change(|r| {
            r.listeners.insert(name.to_owned(), Held::Tcp(listener));
        });
    }

    /// Binds a TCP listener on a free loopback port, lends it as `name` (see
    /// [`hold_tcp`](Self::hold_tcp)) and returns its address, for the test to connect to.
    pub fn bind_tcp(&self, name: &str) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        self.hold_tcp(name, listener);
        Ok(addr)
    }

    /// Lends a Unix-socket listener to the container as the socket named `name`.
    pub fn hold_unix(&self, name: &str, listener: UnixListener) {
        self.shared.change(|r| {
            r.listeners.insert(name.to_owned(), Held::Unix(listener));
        });
    }

    /// Binds a Unix socket at `path`, lends it as `name` (see [`hold_unix`](Self::hold_unix)).
    pub fn bind_unix(&self, name: &str, path: &Path) -> io::Result<()> {
        self.hold_unix(name, UnixListener::bind(path)?);
        Ok(())
    }

    /// Whether the host holds sockets for the container.
    pub fn holds_sockets(&self) -> bool {
        !self.record().listeners.is_empty()
    }

    /// State for the container to take with `ctx.take_handover()` (once), as if a previous
    /// instance had handed it over on a hot reload.
    pub fn set_handover(&self, state: Handover) {
        self.shared.change(|r| r.handover = Some(state));
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.record().logs.clone()
    }

    /// Whether a line whose message contains `needle` was logged.
    pub fn logged(&self, needle: &str) -> bool {
        self.find_log(needle).is_some()
    }

    /// The first line whose message contains `needle`.
    pub fn find_log(&self, needle: &str) -> Option<LogLine> {
        self.record()
            .logs
            .iter()
            .find(|l| l.message.contains(needle))
            .cloned()
    }

    /// The readiness the container last reported with `ctx.set_ready` (`None`: never).
    pub fn ready(&self) -> Option<bool> {
        self.record().readiness.last().copied()
    }

    /// Every `ctx.set_ready` call, in order.
    pub fn readiness(&self) -> Vec<bool> {
        self.record().readiness.clone()
    }

    /// The reasons given to `ctx.report_failure`, in order.
    pub fn failures(&self) -> Vec<String> {
        self.record().failures.clone()
    }

    /// The messages given to `ctx.report_finished`, in order.
    pub fn finished(&self) -> Vec<String> {
        self.record().finished.clone()
    }

    /// Waits until `cond` holds (checked at once and after every log line, readiness
    /// change, failure or finish the container reports), for at most `timeout`. Returns
    /// whether it held.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&TestHost) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.record();
            // The condition reads the record itself: let go of the lock while it runs.
            drop(record);
            if cond(self) {
                return true;
            }
            let record = self.record();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Wake at least every 50 ms: the condition may also look at things the
            // container does not report (a file, a socket).
            let wait = left.min(Duration::from_millis(50));
            drop(
                self.shared
                    .changed
                    .wait_timeout(record, wait)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Waits up to `timeout` for a line whose message contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<LogLine> {
        let mut found = None;
        self.wait_for(timeout, |host| {
            found = host.find_log(needle);
            found.is_some()
        });
        found
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Record> {
        // A test that panicked while holding the lock has failed already; keep reading.
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// The [`FfiHost`] a [`TestHost`] gives its contexts.
#[derive(Clone)]
struct Bridge {
    shared: Arc<Shared>,
}

impl From<FfiLevel> for Level {
    fn from(level: FfiLevel) -> Self {
        match level {
            FfiLevel::Error => Level::Error,
            FfiLevel::Warn => Level::Warn,
            FfiLevel::Info => Level::Info,
            FfiLevel::Debug => Level::Debug,
            FfiLevel::Trace => Level::Trace,
        }
    }
}

impl FfiHost for Bridge {
    fn log(
        &self,
        level: FfiLevel,
        message: RStr<'_>,
        fields: RSlice<'_, Tuple2<RStr<'_>, RStr<'_>>>,
    ) {
        let line = LogLine {
            level: level.into(),
            message: message.as_str().to_owned(),
            fields: fields
                .iter()
                .map(|Tuple2(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
                .collect(),
        };
        if self.shared.echo {
            eprintln!("[{}] {line}", self.shared.name);
        }
        self.shared.change(|r| r.logs.push(line));
    }

    fn stop_requested(&self) -> bool {
        self.shared.lock().stop_requested
    }

    fn set_ready(&self, ready: bool) {
        self.shared.change(|r| r.readiness.push(ready));
    }

    fn report_failure(&self, reason: RStr<'_>) {
        self.shared
            .change(|r| r.failures.push(reason.as_str().to_owned()));
    }

    fn report_finished(&self, message: RStr<'_>) {
        self.shared
            .change(|r| r.finished.push(message.as_str().to_owned()));
    }

    fn listener(&self, name: RStr<'_>) -> RResult<FfiListener, RString> {
        let record = self.shared.lock();
        let Some(held) = record.listeners.get(name.as_str()) else {
            let mut names: Vec<&str> = record.listeners.keys().map(String::as_str).collect();
            names.sort_unstable();
            return RErr(RString::from(if names.is_empty() {
                format!("no socket named `{name}`: the test host holds none")
            } else {
                format!(
                    "no socket named `{name}`: the test host holds {}",
                    names.join(", ")
                )
            }));
        };
        // A new descriptor of the same socket for the container, as the host lends one.
        let lent = match held {
            Held::Tcp(l) => l
                .try_clone()
                .map(|l| (FfiListenerKind::Tcp, l.into_raw_fd())),
            Held::Unix(l) => l
                .try_clone()
                .map(|l| (FfiListenerKind::Unix, l.into_raw_fd())),
        };
        match lent {
            Ok((kind, fd)) => ROk(FfiListener { kind, fd }),
            Err(e) => RErr(RString::from(format!(
                "duplicating the socket `{name}`: {e}"
            ))),
        }
    }

    fn take_handover(&self) -> ROption<FfiHandover> {
        let mut state = None;
        self.shared.change(|r| state = r.handover.take());
        match state {
            Some(h) => ROption::RSome(FfiHandover {
                version: h.version,
                bytes: h.bytes.into(),
            }),
            None => RNone,
        }
    }
}

/// A step of a [`Lifecycle`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The config check the host runs before constructing (only the `Config` type's
    /// `Deserialize`).
    CheckConfig,
    /// The constructor, through the export glue.
    New,
    Start,
    /// Ready: waits for `set_ready(true)` if the container said `set_ready(false)`, then
    /// the readiness probe (`Container::ready`).
    Ready,
    /// The liveness probe (`Container::health`).
    Health,
    /// The test's own check ([`Lifecycle::while_running`]).
    WhileRunning,
    /// `Container::handover` (its note says what was handed over).
    Handover,
    Stop,
    /// Dropping the container (its `Drop`).
    Drop,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CheckConfig => "check config",
            Step::New => "new",
            Step::Start => "start",
            Step::Ready => "ready",
            Step::Health => "health",
            Step::WhileRunning => "while running",
            Step::Handover => "handover",
            Step::Stop => "stop",
            Step::Drop => "drop",
        })
    }
}

/// What one step of a [`Lifecycle`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub step: Step,
    /// `Ok` with a note (often empty), or `Err` with what went wrong: the container's
    /// error, `panicked: ...`, `unhealthy: ...`, `did not return within ...`.
    pub result: Result<String, String>,
    pub took: Duration,
}

impl StepReport {
    /// Whether the step went well.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The error, if the step failed.
    pub fn error(&self) -> Option<&str> {
        self.result.as_ref().err().map(String::as_str)
    }
}

/// When a [`Lifecycle`] asks the container for its state ([`Container::handover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandoverAt {
    /// While it still runs, before `stop` when the test host holds sockets for it (the
    /// host's overlapping reload), else after `stop` (a stop-first reload).
    #[default]
    Auto,
    /// While it still runs, before `stop`.
    BeforeStop,
    /// After `stop`, before it is dropped.
    AfterStop,
    /// Never.
    Skip,
}

/// The check a test runs while the container is running: see [`Lifecycle::while_running`].
type Check<'a> = Box<dyn FnOnce(&Running<'_>) -> Result<(), Error> + 'a>;

/// Runs a container's life cycle through the export glue: see the [module docs](self).
///
/// `constructor` is what you give [`export_plugin!`](crate::export_plugin)'s
/// `constructor:`.
pub struct Lifecycle<'a, C, T, E, F> {
    constructor: F,
    config: Result<String, String>,
    host: TestHost,
    timeout: Duration,
    handover: HandoverAt,
    check: Option<Check<'a>>,
    types: std::marker::PhantomData<fn(C) -> Result<T, E>>,
}

impl<'a, C, T, E, F> Lifecycle<'a, C, T, E, F>
where
    C: DeserializeOwned + 'static,
    T: Container,
    E: fmt::Display + 'static,
    F: FnOnce(C, Context) -> Result<T, E> + Send + 'static,
{
    /// A life cycle of the container `constructor` makes, with an empty config (`{}`, what
    /// the host passes when the config file has none), a fresh [`TestHost`] named `test`
    /// and [`DEFAULT_TIMEOUT`] for every call.
    pub fn new(constructor: F) -> Self {
        Self {
            constructor,
            config: Ok("{}".to_owned()),
            host: TestHost::default(),
            timeout: DEFAULT_TIMEOUT,
            handover: HandoverAt::default(),
            check: None,
            types: std::marker::PhantomData,
        }
    }

    /// The container's config, as the host would pass its `config` table: anything
    /// serializable, usually [`json!`]`({ ... })`.
    pub fn config(mut self, config: impl Serialize) -> Self {
        self.config = serde_json::to_string(&config).map_err(|e| e.to_string());
        self
    }

    /// The config as JSON text, passed as it is (even if it does not parse).
    pub fn config_json(mut self, json: &str) -> Self {
        self.config = Ok(json.to_owned());
        self
    }

    /// Runs the container against `host` (keep a clone to look at it afterwards, or get it
    /// from [`Report::host`]): lend it sockets and state before you run.
    pub fn host(mut self, host: TestHost) -> Self {
        self.host = host;
        self
    }

    /// How long each call may take (and how long to wait for `set_ready(true)`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// When to ask for the container's state (default [`HandoverAt::Auto`]).
    pub fn handover(mut self, at: HandoverAt) -> Self {
        self.handover = at;
        self
    }

    /// A check to run once the container is started, ready and healthy: talk to it, wait
    /// for its work, probe it again. An `Err` (or a panic) fails the
    /// [`Step::WhileRunning`] step; the container is stopped and dropped all the same.
    pub fn while_running(
        mut self,
        check: impl FnOnce(&Running<'_>) -> Result<(), Error> + 'a,
    ) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    /// Runs every step, as the host would, and reports them. After a failed config check
    /// or constructor nothing more runs; after a failed `start` the container is stopped
    /// and dropped (as the host does); after a call that does not return in time nothing
    /// more runs (its thread is left behind).
    pub fn run(self) -> Report {
        let Self {
            constructor,
            config,
            host,
            timeout,
            handover,
            check,
            types: _,
        } = self;
        let mut report = Report {
            steps: Vec::new(),
            handover: None,
            host: host.clone(),
        };

        let started = Instant::now();
        let checked = config.and_then(|json| {
            check_config_of::<C>(RStr::from_str(&json))
                .into_result()
                .map(|()| json)
                .map_err(|e| {
                    if e.path.is_empty() {
                        e.message.into_string()
                    } else {
                        format!("{}: {}", e.path, e.message)
                    }
                })
        });
        report.push(
            Step::CheckConfig,
            started,
            checked.clone().map(|_| String::new()),
        );
        let Ok(json) = checked else {
            return report;
        };

        let started = Instant::now();
        let worker = match Worker::spawn(constructor, &host, json, timeout) {
            Ok(worker) => {
                report.push(Step::New, started, Ok(String::new()));
                worker
            }
            Err(e) => {
                report.push(Step::New, started, Outcome::Failed(e));
                return report;
            }
        };

        let started = Instant::now();
        let start = worker.call(|c| c.start().into_result().map(|()| String::new()));
        let start_ok = start.is_ok();
        if !report.push(Step::Start, started, start) {
            return report;
        }
        if start_ok {
            let started = Instant::now();
            let ready = wait_ready(&host, &worker, timeout);
            if !report.push(Step::Ready, started, ready) {
                return report;
            }
            let started = Instant::now();
            let health = worker.call(|c| c.health().into_result().and_then(healthy));
            if !report.push(Step::Health, started, health) {
                return report;
            }
            if let Some(check) = check {
                let started = Instant::now();
                let running = Running {
                    host: &host,
                    worker: &worker,
                };
                let result = match catch_unwind(AssertUnwindSafe(|| check(&running))) {
                    Ok(result) => result.map(|()| String::new()).map_err(|e| e.to_string()),
                    Err(payload) => Err(format!("panicked: {}", panic_message(&*payload))),
                };
                report.push(Step::WhileRunning, started, result);
            }
        }
        let handover_at = match handover {
            HandoverAt::Auto if host.holds_sockets() => HandoverAt::BeforeStop,
            HandoverAt::Auto => HandoverAt::AfterStop,
            other => other,
        };
        if start_ok && handover_at == HandoverAt::BeforeStop && !report.hand_over(&worker) {
            return report;
        }
        host.request_stop();
        let started = Instant::now();
        let stop = worker.call(|c| c.stop().into_result().map(|()| String::new()));
        let stop_ok = stop.is_ok();
        if !report.push(Step::Stop, started, stop) {
            return report;
        }
        if start_ok && stop_ok && handover_at == HandoverAt::AfterStop && !report.hand_over(&worker)
        {
            return report;
        }
        let started = Instant::now();
        let dropped = worker.call(|c| c.dispose().into_result().map(|()| String::new()));
        report.push(Step::Drop, started, dropped);
        report
    }
}

/// `Ok` for a healthy answer, else `unhealthy: reason`.
fn healthy(health: FfiHealth) -> Result<String, FfiError> {
    match health.status {
        FfiHealthStatus::Healthy => Ok(String::new()),
        FfiHealthStatus::Unhealthy => Err(FfiError::new(
            FfiErrorKind::Failed,
            format!("unhealthy: {}", health.message),
        )),
    }
}

fn to_health(health: FfiHealth) -> Health {
    match health.status {
        FfiHealthStatus::Healthy => Health::Healthy,
        FfiHealthStatus::Unhealthy => Health::Unhealthy(health.message.into_string()),
    }
}

/// The ready step: `set_ready(true)` if the container said `set_ready(false)`, then the
/// readiness probe.
fn wait_ready(host: &TestHost, worker: &Worker, timeout: Duration) -> Outcome {
    if host.ready() == Some(false) && !host.wait_for(timeout, |h| h.ready() == Some(true)) {
        return Outcome::Failed(format!(
            "said set_ready(false) and did not say set_ready(true) within {timeout:?}"
        ));
    }
    worker.call(|c| match c.ready() {
        ROption::RSome(result) => result.into_result().and_then(healthy),
        RNone => Ok(String::new()),
    })
}

/// A call's outcome: done (with a note), failed (with the error), or stuck (the worker
/// thread is left behind; nothing more can be called).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done(String),
    Failed(String),
    Stuck(String),
}

impl Outcome {
    fn is_ok(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }
}

impl From<Result<String, String>> for Outcome {
    fn from(result: Result<String, String>) -> Self {
        match result {
            Ok(note) => Outcome::Done(note),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// A call to make on the worker thread.
type Job = Box<dyn FnOnce(&mut FfiContainerBox) + Send>;

/// The thread a container lives on, as the host gives each container one.
struct Worker {
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
    stuck: std::cell::Cell<bool>,
}

impl Worker {
    /// Constructs the container through the export glue on a new thread.
    fn spawn<C, T, E, F>(
        constructor: F,
        host: &TestHost,
        config_json: String,
        timeout: Duration,
    ) -> Result<Self, String>
    where
        C: DeserializeOwned + 'static,
        T: Container,
        E: fmt::Display + 'static,
        F: FnOnce(C, Context) -> Result<T, E> + Send + 'static,
    {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (built_tx, built_rx) = mpsc::channel();
        let (name, ffi) = (host.name().to_owned(), host.ffi());
        thread::Builder::new()
            .name(format!("balut-test:{name}"))
            .spawn(move || {
                let built = new_container(
                    constructor,
                    RStr::from_str(&name),
                    RStr::from_str(&config_json),
                    ffi,
                )
                .into_result();
                let mut container = match built {
                    Ok(container) => {
                        let _ = built_tx.send(Ok(()));
                        container
                    }
                    Err(e) => {
                        let _ = built_tx.send(Err(describe(e)));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    job(&mut container);
                }
                // The test went away without the drop step (a stuck call, a panic): the
                // glue's own `Drop` drops the container, catching a panic.
            })
            .map_err(|e| format!("cannot spawn the container's thread: {e}"))?;
        match built_rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(Self {
                jobs,
                timeout,
                stuck: std::cell::Cell::new(false),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("did not return within {timeout:?}")),
        }
    }

    /// Runs `f` on the container's thread and waits for it, at most the timeout.
    fn call(
        &self,
        f: impl FnOnce(&mut FfiContainerBox) -> Result<String, FfiError> + Send + 'static,
    ) -> Outcome {
        match self.ask(f) {
            Ok(Ok(note)) => Outcome::Done(note),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(stuck) => Outcome::Stuck(stuck),
        }
    }

    /// Runs `f` on the container's thread: `Err` if it did not answer in time (or the
    /// thread is gone), else what it returned.
    fn ask<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut FfiContainerBox) -> Result<R, FfiError> + Send + 'static,
    ) -> Result<Result<R, String>, String> {
        if self.stuck.get() {
            return Err("an earlier call did not return".to_owned());
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |container| {
            let _ = tx.send(f(container).map_err(describe));
        });
        if self.jobs.send(job).is_err() {
            self.stuck.set(true);
            return Err("the container's thread is gone".to_owned());
        }
        match rx.recv_timeout(self.timeout) {
            Ok(result) => Ok(result),
            Err(_) => {
                self.stuck.set(true);
                Err(format!("did not return within {:?}", self.timeout))
            }
        }
    }
}

fn describe(error: FfiError) -> String {
    error.message.into_string()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// The running container, for a [`Lifecycle::while_running`] check.
pub struct Running<'r> {
    host: &'r TestHost,
    worker: &'r Worker,
}

impl Running<'_> {
    /// The test host (logs, readiness, failures, sockets).
    pub fn host(&self) -> &TestHost {
        self.host
    }

    /// Calls the liveness probe now, through the glue. `Err`: it panicked or did not
    /// return in time.
    pub fn health(&self) -> Result<Health, Error> {
        self.probe(|c| c.health().into_result().map(to_health))
    }

    /// Calls the readiness probe now, through the glue.
    pub fn ready(&self) -> Result<Health, Error> {
        self.probe(|c| match c.ready() {
            ROption::RSome(result) => result.into_result().map(to_health),
            RNone => Ok(Health::Healthy),
        })
    }

    fn probe(
        &self,
        f: impl FnOnce(&mut FfiContainerBox) -> Result<Health, FfiError> + Send + 'static,
    ) -> Result<Health, Error> {
        match self.worker.ask(f) {
            Ok(result) => result.map_err(Error::msg),
            Err(stuck) => Err(Error::msg(stuck)),
        }
    }
}

/// The steps a [`Lifecycle`] ran, with their results and timings.
#[derive(Debug)]
pub struct Report {
    steps: Vec<StepReport>,
    handover: Option<Handover>,
    host: TestHost,
}

impl Report {
    /// Records a step; `false` when nothing more can be called (the call got stuck).
    fn push(&mut self, step: Step, started: Instant, outcome: impl Into<Outcome>) -> bool {
        let outcome = outcome.into();
        let more = !matches!(outcome, Outcome::Stuck(_));
        let result = match outcome {
            Outcome::Done(note) => Ok(note),
            Outcome::Failed(e) | Outcome::Stuck(e) => Err(e),
        };
        self.steps.push(StepReport {
            step,
            result,
            took: started.elapsed(),
        });
        more
    }

    /// The handover step; `false` when the call got stuck.
    fn hand_over(&mut self, worker: &Worker) -> bool {
        let started = Instant::now();
        let answer = worker.ask(|c| Ok(c.handover()));
        let (outcome, state) = match answer {
            Err(stuck) => (Outcome::Stuck(stuck), None),
            Ok(Err(e)) => (Outcome::Failed(e), None),
            Ok(Ok(RNone)) => (Outcome::Done("nothing handed over".to_owned()), None),
            Ok(Ok(ROption::RSome(RErr(e)))) => (Outcome::Failed(describe(e)), None),
            Ok(Ok(ROption::RSome(ROk(h)))) => (
                Outcome::Done(format!(
                    "{} bytes in format version {}",
                    h.bytes.len(),
                    h.version
                )),
                Some(Handover::new(h.version, h.bytes.into_vec())),
            ),
        };
        self.handover = state;
        self.push(Step::Handover, started, outcome)
    }

    /// Every step that ran, in order.
    pub fn steps(&self) -> &[StepReport] {
        &self.steps
    }

    /// The report of `step`, if it ran.
    pub fn step(&self, step: Step) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// Whether every step ran and went well (up to and including the drop).
    pub fn is_ok(&self) -> bool {
        self.failure().is_none() && self.step(Step::Drop).is_some()
    }

    /// The first step that failed.
    pub fn failure(&self) -> Option<&StepReport> {
        self.steps.iter().find(|s| !s.is_ok())
    }

    /// Panics, showing every step, unless [`is_ok`](Self::is_ok).
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.is_ok(), "the life cycle failed:\n{self}");
        self
    }

    /// What the container handed over, to give the next one with
    /// [`TestHost::set_handover`].
    pub fn handover(&self) -> Option<&Handover> {
        self.handover.as_ref()
    }

    /// The test host the container ran against.
    pub fn host(&self) -> &TestHost {
        &self.host
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            let (mark, text) = match &s.result {
                Ok(note) => ("ok", note.as_str()),
                Err(e) => ("FAILED", e.as_str()),
            };
            write!(
                f,
                "  {:<13} {mark:<6} {:>10.3?}",
                s.step.to_string(),
                s.took
            )?;
            if text.is_empty() {
                writeln!(f)?;
            } else {
                writeln!(f, "  {text}")?;
            }
        }
        if self.step(Step::Drop).is_none() && self.failure().is_none() {
            writeln!(f, "  (did not get to the drop)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
