//! Process isolation: one container instance's calls served by a child process of its own
//! (`balut __isolate NAME`), so that a segfault, an abort, an `exit()`, a stack overflow or
//! a runaway allocation in plugin code ends that process only.
//!
//! The host keeps loading each generation itself (after its pre-flight): its facts, its
//! config checks and its bookkeeping are the same in both modes. The child opens the host's
//! private copy of that generation with the same loader and checks (`child.rs`), and serves
//! every call and every `Context` call back over a socket pair (`protocol.rs`). One child per
//! instance: a restart is a fresh process, a crash takes exactly one container, and a
//! memory limit and the figures are per container.
//!
//! [`Child`] is the host's side: the calls, each with its timeout; a call that overruns a
//! timeout that marks a thread stuck (construct, start, stop, drop) ends the process
//! instead (SIGTERM, then SIGKILL after [`KILL_GRACE`]), so nothing is left pinned. A
//! process that ends on its own is reported to the supervisor as a `Notice::Ended` with
//! the reason (`ending.rs`).

mod child;
mod ending;
pub mod figures;
mod protocol;
mod spawn;

pub use child::main as child_main;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use balut_plugin_api::ffi::FfiLevel;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::loader::{CallError, HealthReport, Library};
use crate::services::{Handover, HostServices};
use crate::sockets::Listeners;
use ending::Hints;
use protocol::{Answer, Call, PROTOCOL, Refusal, ToChild, ToHost};

/// How long a process asked to end with SIGTERM has before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// How long the end of a process's stderr is awaited after it ended (a grandchild may
/// hold it open).
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// The id of the `Open` call, sent at spawn.
const OPEN_ID: u64 = 0;

type Replies = Mutex<HashMap<u64, oneshot::Sender<Result<Answer, Refusal>>>>;

/// What the tasks serving one child share with the calls.
struct Link {
    container: String,
    replies: Replies,
    next_id: AtomicU64,
    /// The instance's side of its `Context`, from `construct` on.
    services: OnceLock<HostServices>,
    /// Set when the host ends the process (a finish, an overrun): no notice then.
    ending_on_purpose: AtomicBool,
    hints: Mutex<Hints>,
}

/// One isolated container instance's process.
pub struct Child {
    library: Arc<Library>,
    pid: u32,
    link: Arc<Link>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    opened: Mutex<Option<oneshot::Receiver<Result<Answer, Refusal>>>>,
    /// The reason, once the process ended and was reaped.
    ended: watch::Receiver<Option<String>>,
    /// Tells the waiter to end the process.
    terminate: watch::Sender<bool>,
    stuck: AtomicBool,
}

impl Child {
    /// Starts the process of container `name` and has it open `library`.
    pub fn spawn(
        exe: &Path,
        name: &str,
        library: Arc<Library>,
        memory_max_bytes: Option<u64>,
        listeners: &Listeners,
    ) -> std::io::Result<Self> {
        let (host_end, child_end) = std::os::unix::net::UnixStream::pair()?;
        let link = Arc::new(Link {
            container: name.to_owned(),
            replies: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(OPEN_ID + 1),
            services: OnceLock::new(),
            ending_on_purpose: AtomicBool::new(false),
            hints: Mutex::new(Hints::default()),
        });
        // The first frames go out before the process runs: the socket's buffer holds them.
        let (open_tx, opened) = oneshot::channel();
        link.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(OPEN_ID, open_tx);
        let facts = &library.facts;
        let open = ToChild::Call {
            id: OPEN_ID,
            timeout_ms: 0,
            call: Box::new(Call::Open {
                container: name.to_owned(),
                copy: facts.copy.clone(),
                file: facts.file.clone(),
                generation: facts.generation,
                sha256: facts.sha256.clone(),
                plugin: facts.info.name.clone(),
                version: facts.info.version.clone(),
                interface: (facts.info.interface.major, facts.info.interface.minor),
                default_requires: facts.default_requires.clone(),
                listeners: listeners
                    .iter()
                    .zip(spawn::FIRST_LISTENER_FD..)
                    .map(|((name, held), fd)| (name.clone(), held.address.to_string(), fd))
                    .collect(),
                max_level: shown_plugin_level(),
            }),
        };
        let mut first = &host_end;
        protocol::write_frame(&mut first, &ToChild::Hello { protocol: PROTOCOL })?;
        protocol::write_frame(&mut first, &open)?;

        let passed: Vec<Arc<OwnedFd>> = listeners.values().map(|h| h.fd.clone()).collect();
        let mut process = spawn::spawn(
            exe,
            name,
            OwnedFd::from(child_end),
            &passed,
            memory_max_bytes,
        )?;
        let pid = process.id().unwrap_or(0);
        let stderr = process.stderr.take();
        host_end.set_nonblocking(true)?;
        let (reader, writer) = tokio::net::UnixStream::from_std(host_end)?.into_split();
        let (terminate, terminate_rx) = watch::channel(false);
        let (ended_tx, ended) = watch::channel(None);
        let drained = tokio::spawn(read_stderr(stderr, link.clone(), pid));
        tokio::spawn(read_frames(reader, link.clone(), terminate.clone()));
        tokio::spawn(wait(process, link.clone(), terminate_rx, drained, ended_tx));
        Ok(Self {
            library,
            pid,
            link,
            writer: tokio::sync::Mutex::new(writer),
            opened: Mutex::new(Some(opened)),
            ended,
            terminate,
            stuck: AtomicBool::new(false),
        })
    }

    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has ended (and was reaped).
    pub fn has_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Ends the process: SIGTERM, then SIGKILL after [`KILL_GRACE`].
    fn end(&self) {
        self.link.ending_on_purpose.store(true, Ordering::SeqCst);
        self.terminate.send_replace(true);
    }

    /// Why the process ended, once it has (waits a little for the waiter to say).
    async fn end_reason(&self) -> String {
        let mut ended = self.ended.clone();
        let waited = tokio::time::timeout(
            KILL_GRACE + STDERR_DRAIN + Duration::from_secs(1),
            ended.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(reason)) => reason.clone().unwrap_or_default(),
            _ => "its connection to the host closed".to_owned(),
        }
    }

    async fn call(
        &self,
        name: &'static str,
        call: Call,
        timeout: Duration,
        overrun_ends_it: bool,
    ) -> Result<Answer, CallError> {
        if let Some(reason) = self.ended.borrow().clone() {
            return Err(CallError::Ended(reason));
        }
        if self.stuck.load(Ordering::SeqCst) {
            return Err(CallError::Stuck);
        }
        let id = self.link.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.link.replies().insert(id, tx);
        let request = ToChild::Call {
            id,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            call: Box::new(call),
        };
        let sent = async {
            let mut frame = Vec::new();
            protocol::write_frame(&mut frame, &request)?;
            self.writer.lock().await.write_all(&frame).await
        };
        let outcome = tokio::time::timeout(timeout, async {
            sent.await.map_err(|_| ())?;
            rx.await.map_err(|_| ())
        })
        .await;
        match outcome {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(refusal))) => Err(refusal.into_error()),
            Ok(Err(())) => {
                self.link.replies().remove(&id);
                Err(CallError::Ended(self.end_reason().await))
            }
            Err(_) => {
                self.link.replies().remove(&id);
                if overrun_ends_it {
                    self.stuck.store(true, Ordering::SeqCst);
                    warn!(container = %self.link.container, pid = self.pid, call = name, "a call overran its timeout; ending the container's process");
                    self.end();
                }
                Err(CallError::Timeout {
                    call: name,
                    timeout,
                })
            }
        }
    }

    async fn done(
        &self,
        name: &'static str,
        call: Call,
        timeout: Duration,
    ) -> Result<(), CallError> {
        match self.call(name, call, timeout, true).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Waits for the library to open in the child, then runs the plugin's constructor.
    pub async fn construct(
        &self,
        name: &str,
        config_json: String,
        services: &HostServices,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let _ = self.link.services.set(services.clone());
        let handover = services.take_handover().map(|h| (h.version, h.bytes));
        let began = tokio::time::Instant::now();
        let opened = self
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(opened) = opened {
            match tokio::time::timeout(timeout, opened).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(refusal))) => return Err(refusal.into_error()),
                Ok(Err(_)) => return Err(CallError::Ended(self.end_reason().await)),
                Err(_) => {
                    self.stuck.store(true, Ordering::SeqCst);
                    self.end();
                    return Err(CallError::Timeout {
                        call: "opening the library in its process",
                        timeout,
                    });
                }
            }
        }
        let call = Call::Construct {
            container: name.to_owned(),
            config_json,
            handover,
        };
        let left = timeout
            .saturating_sub(began.elapsed())
            .max(Duration::from_millis(1));
        self.done("the constructor", call, left).await
    }

    pub async fn start(&self, timeout: Duration) -> Result<(), CallError> {
        self.done("start", Call::Start, timeout).await
    }

    pub async fn stop(&self, timeout: Duration) -> Result<(), CallError> {
        self.done("stop", Call::Stop, timeout).await
    }

    pub async fn handover(&self, timeout: Duration) -> Result<Option<Handover>, CallError> {
        match self.call("handover", Call::Handover, timeout, true).await? {
            Answer::Handover(state) => {
                Ok(state.map(|(version, bytes)| Handover { version, bytes }))
            }
            other => Err(unexpected("handover", &other)),
        }
    }

    pub async fn dispose(&self, timeout: Duration) -> Result<(), CallError> {
        self.done("drop", Call::Dispose, timeout).await
    }

    pub async fn health(&self, timeout: Duration) -> Result<HealthReport, CallError> {
        // As on a thread: a slow health check is a failed probe, not a stuck container.
        match self.call("health", Call::Health, timeout, false).await? {
            Answer::Health {
                healthy,
                message,
                micros,
            } => Ok(HealthReport {
                healthy,
                message,
                duration: Duration::from_micros(micros),
            }),
            other => Err(unexpected("health", &other)),
        }
    }

    pub async fn ready(&self, timeout: Duration) -> Result<Option<HealthReport>, CallError> {
        match self.call("ready", Call::Ready, timeout, false).await? {
            Answer::Health {
                healthy,
                message,
                micros,
            } => Ok(Some(HealthReport {
                healthy,
                message,
                duration: Duration::from_micros(micros),
            })),
            Answer::NoReadiness => Ok(None),
            other => Err(unexpected("ready", &other)),
        }
    }

    /// Lets the process end (its socket closes; it exits at once), or ends it if it does
    /// not within `timeout`. Succeeds once it is gone: nothing of it stays in the host.
    pub async fn finish(self, timeout: Duration) -> Result<(), CallError> {
        self.link.ending_on_purpose.store(true, Ordering::SeqCst);
        let mut writer = self.writer.lock().await;
        let _ = writer.shutdown().await;
        drop(writer);
        let mut ended = self.ended.clone();
        if tokio::time::timeout(timeout, ended.wait_for(Option::is_some))
            .await
            .is_err()
        {
            self.end();
        }
        let deadline = KILL_GRACE + STDERR_DRAIN + Duration::from_secs(1);
        match tokio::time::timeout(deadline, ended.wait_for(Option::is_some)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(CallError::Timeout {
                call: "process exit",
                timeout: timeout + deadline,
            }),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Abandoned (a start given up at shutdown): its process goes too.
        if self.ended.borrow().is_none() {
            self.end();
        }
    }
}

impl Link {
    fn replies(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Answer, Refusal>>>> {
        self.replies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn services(&self) -> Option<&HostServices> {
        self.services.get()
    }
}

fn unexpected(call: &str, answer: &Answer) -> CallError {
    CallError::Failed(format!("its process answered {call} with {answer:?}"))
}

impl Refusal {
    fn into_error(self) -> CallError {
        match self {
            Self::Failed(m) => CallError::Failed(m),
            Self::Panicked(m) => CallError::Panicked(m),
            Self::BadConfig(m) => CallError::BadConfig(m),
            Self::Timeout { call, ms } => CallError::Failed(format!(
                "{call} did not return within {ms}ms in its process"
            )),
            Self::Stuck => CallError::Stuck,
            Self::NotConstructed => CallError::NotConstructed,
            Self::NotOpened(m) => {
                CallError::Failed(format!("its process could not open the library: {m}"))
            }
        }
    }
}

/// Reads the child's frames: replies to their calls, the rest to the container's services.
async fn read_frames(reader: OwnedReadHalf, link: Arc<Link>, terminate: watch::Sender<bool>) {
    // One read per frame, mostly.
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut greeted = false;
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).await.is_err() {
            return; // Closed: the waiter reports why.
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > protocol::MAX_FRAME {
            warn!(container = %link.container, len, "its process sent an oversized frame; ending it");
            terminate.send_replace(true);
            return;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let message: ToHost = match protocol::decode(&body) {
            Ok(message) => message,
            Err(e) => {
                warn!(container = %link.container, error = %e, "its process sent a frame the host cannot read; ending it");
                terminate.send_replace(true);
                return;
            }
        };
        match message {
            ToHost::Hello { protocol, .. } => {
                if protocol != PROTOCOL {
                    warn!(container = %link.container, child = protocol, host = PROTOCOL, "its process speaks another protocol version; ending it");
                    terminate.send_replace(true);
                    return;
                }
                greeted = true;
            }
            _ if !greeted => {
                warn!(container = %link.container, "its process did not greet first; ending it");
                terminate.send_replace(true);
                return;
            }
            ToHost::Reply { id, result } => {
                if let Some(reply) = link.replies().remove(&id) {
                    let _ = reply.send(result);
                }
            }
            ToHost::Log {
                level,
                message,
                fields,
            } => {
                if let Some(services) = link.services() {
                    let fields = fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                    services.log(level_of(level), &message, fields);
                }
            }
            ToHost::Ready(ready) => {
                if let Some(services) = link.services() {
                    services.report_ready(ready);
                }
            }
            ToHost::Failed(reason) => {
                if let Some(services) = link.services() {
                    services.report_failure(&reason);
                }
            }
            ToHost::Finished(message) => {
                if let Some(services) = link.services() {
                    services.report_finished(&message);
                }
            }
        }
    }
}

/// The most verbose level of plugin log lines the host's subscriber shows, as the protocol
/// numbers levels.
fn shown_plugin_level() -> Option<u8> {
    let shown = |level| match level {
        FfiLevel::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        FfiLevel::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
        FfiLevel::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
        FfiLevel::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
        FfiLevel::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
    };
    (0..=4u8).rev().find(|&n| shown(level_of(n)))
}

fn level_of(level: u8) -> FfiLevel {
    match level {
        0 => FfiLevel::Error,
        1 => FfiLevel::Warn,
        2 => FfiLevel::Info,
        3 => FfiLevel::Debug,
        _ => FfiLevel::Trace,
    }
}

/// The longest line of a child's stderr passed on whole; a longer one is passed on in
/// pieces this long, so a plugin writing without newlines cannot grow the host's memory.
const MAX_STDERR_LINE: usize = 64 * 1024;

/// Passes the child's stderr on to the host's, line by line, each line led by the
/// container's name and the process's pid (`web[4242]: ...`), noting what tells how it
/// ends.
async fn read_stderr(stderr: Option<tokio::process::ChildStderr>, link: Arc<Link>, pid: u32) {
    use std::io::Write;
    let Some(stderr) = stderr else { return };
    let mut input = BufReader::new(stderr);
    let prefix = format!("{}[{pid}]: ", link.container);
    let mut line = Vec::new();
    loop {
        let Ok(chunk) = input.fill_buf().await else {
            return;
        };
        if chunk.is_empty() {
            if !line.is_empty() {
                pass_on(&link, &prefix, &mut line);
            }
            return;
        }
        let (taken, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_STDERR_LINE.saturating_sub(line.len()).max(1);
        let taken = taken.min(room);
        line.extend_from_slice(&chunk[..taken]);
        input.consume(taken);
        if complete || line.len() >= MAX_STDERR_LINE {
            pass_on(&link, &prefix, &mut line);
        }
    }

    fn pass_on(link: &Link, prefix: &str, line: &mut Vec<u8>) {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        link.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(&String::from_utf8_lossy(line));
        let mut out = Vec::with_capacity(prefix.len() + line.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        let _ = std::io::stderr().write_all(&out);
        line.clear();
    }
}

/// Reaps the child: when it ends on its own, or when asked to end it. Then tells the calls
/// (and, if nobody asked, the supervisor) why it ended.
async fn wait(
    mut process: tokio::process::Child,
    link: Arc<Link>,
    mut terminate: watch::Receiver<bool>,
    drained: tokio::task::JoinHandle<()>,
    ended: watch::Sender<Option<String>>,
) {
    let status = tokio::select! {
        status = process.wait() => status,
        () = async { let _ = terminate.wait_for(|end| *end).await; } => {
            if let Some(pid) = process.id().and_then(|pid| i32::try_from(pid).ok()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(KILL_GRACE, process.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = process.start_kill();
                    process.wait().await
                }
            }
        }
    };
    let _ = tokio::time::timeout(STDERR_DRAIN, drained).await;
    let reason = match status {
        Ok(status) => {
            let hints = *link.hints.lock().unwrap_or_else(PoisonError::into_inner);
            ending::describe(status, hints)
        }
        Err(e) => format!("its process could not be waited for: {e}"),
    };
    ended.send_replace(Some(reason.clone()));
    // Calls still waiting learn the reason from `ended` when their reply is dropped.
    link.replies().clear();
    if !link.ending_on_purpose.load(Ordering::SeqCst) {
        warn!(container = %link.container, reason = %reason, "the container's process ended");
        if let Some(services) = link.services() {
            services.report_ended(&reason);
        }
    }
}
