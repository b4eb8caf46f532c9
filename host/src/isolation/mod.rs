//! Process isolation: one container instance's calls served by a child process of its own
//! (`balut __isolate NAME`), so that a segfault, an abort, an `exit()`, a stack overflow or
//! a runaway allocation in plugin code ends that process only.
//!
//! The host keeps loading each generation itself (after its pre-flight): its facts, its
//! config checks and its bookkeeping are the same in both modes. The child opens the host's
//! private copy of that generation with the same loader and layout check (`child.rs`), and serves
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
mod tasks;

pub use child::main as child_main;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::loader::{CallError, HealthReport, Library};
use crate::services::{Handover, HostServices};
use crate::sockets::Listeners;
use ending::Hints;
use protocol::{Answer, Call, PROTOCOL, Refusal, ToChild};

/// How long a process asked to end with SIGTERM has before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// How long the end of a process's stderr is awaited after it ended (a grandchild may
/// hold it open).
pub(super) const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// The id of the `Open` call, sent at spawn.
const OPEN_ID: u64 = 0;

type Replies = Mutex<HashMap<u64, oneshot::Sender<Result<Answer, Refusal>>>>;

/// What the tasks serving one child share with the calls.
pub(super) struct Link {
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
                max_level: tasks::shown_plugin_level(),
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
        let drained = tokio::spawn(tasks::read_stderr(stderr, link.clone(), pid));
        tokio::spawn(tasks::read_frames(reader, link.clone(), terminate.clone()));
        tokio::spawn(tasks::wait(
            process,
            link.clone(),
            terminate_rx,
            drained,
            ended_tx,
        ));
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
        let answer = self.call("health", Call::Health, timeout, false).await?;
        health_report(answer).map_err(|other| unexpected("health", &other))
    }

    pub async fn ready(&self, timeout: Duration) -> Result<Option<HealthReport>, CallError> {
        match self.call("ready", Call::Ready, timeout, false).await? {
            Answer::NoReadiness => Ok(None),
            other => health_report(other)
                .map(Some)
                .map_err(|other| unexpected("ready", &other)),
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

/// A health or readiness answer as the host's report; any other answer back.
fn health_report(answer: Answer) -> Result<HealthReport, Answer> {
    match answer {
        Answer::Health {
            healthy,
            message,
            micros,
        } => Ok(HealthReport {
            healthy,
            message,
            duration: Duration::from_micros(micros),
        }),
        other => Err(other),
    }
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
