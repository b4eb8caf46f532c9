//! The thread that makes every call into one container instance.
//!
//! Constructing, starting, stopping, checking and dropping a container all run on its own
//! worker thread, one call at a time, so that whatever the plugin leaves in thread-local
//! storage dies with a thread the host joins before it closes the library. Each call has a
//! timeout; a call that overruns marks the worker stuck, and a stuck worker (with the
//! `Arc<Library>` it holds) is abandoned, which keeps its library mapped for good.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use abi_stable::std_types::RResult;
use balut_plugin_api::ffi::{FfiContainerBox, FfiError, FfiErrorKind, FfiHostArc};
use tokio::sync::oneshot;

use super::Library;
use crate::crash;
use crate::services::Handover;

/// Why a call into a container did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Panicked(String),
    #[error("{0}")]
    BadConfig(String),
    #[error("stuck: no return from {call} within {}ms", timeout.as_secs_f64().mul_add(1000.0, 0.0).round())]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("not called: an earlier call is stuck")]
    Stuck,
    #[error("the container was not constructed")]
    NotConstructed,
    /// Process isolation: the container's process ended (the reason, such as `killed by
    /// signal SIGSEGV`), or it could not serve the call.
    #[error("its process ended: {0}")]
    Ended(String),
}

impl CallError {
    fn from_ffi(error: FfiError) -> Self {
        let message = error.message.into_string();
        match error.kind {
            FfiErrorKind::Panicked => Self::Panicked(message),
            FfiErrorKind::BadConfig => Self::BadConfig(message),
            FfiErrorKind::Failed | FfiErrorKind::Disposed => Self::Failed(message),
        }
    }

    /// Whether the call overran or could not be made because another one did.
    pub fn is_stuck(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Stuck)
    }
}

fn convert<T>(result: RResult<T, FfiError>) -> Result<T, CallError> {
    result.into_result().map_err(CallError::from_ffi)
}

/// The outcome of one health check, in host types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub message: String,
    pub duration: Duration,
}

type Slot = Option<FfiContainerBox>;
type Reply<R> = oneshot::Sender<Result<R, CallError>>;

/// One call for the worker thread. The probes' calls, the most frequent by far, are
/// plain values (no boxed closure to allocate per probe).
enum Job {
    Health(Reply<HealthReport>),
    Ready(Reply<Option<HealthReport>>),
    Other(Box<dyn FnOnce(&mut Slot) + Send>),
}

impl Job {
    fn run(self, slot: &mut Slot) {
        match self {
            Self::Health(reply) => {
                let _ = reply.send(calls::health(slot));
            }
            Self::Ready(reply) => {
                let _ = reply.send(calls::ready(slot));
            }
            Self::Other(job) => job(slot),
        }
    }
}

/// The worker thread's queue of calls: the cheapest hand-off between a task and a thread
/// (an uncontended lock, then `unpark`; the thread parks when it finds nothing to do), where
/// a channel adds a registration of the waiting thread and a lock of its own per wake-up.
#[derive(Default)]
struct Queue {
    /// The calls, and whether the queue is closed (no more calls: the thread ends once it
    /// has run those queued).
    jobs: Mutex<(VecDeque<Job>, bool)>,
}

impl Queue {
    /// Queues `job`; gives it back if the queue is closed.
    fn push(&self, job: Job) -> Result<(), Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.1 {
            return Err(job);
        }
        jobs.0.push_back(job);
        Ok(())
    }

    /// The next call; `None` once the queue is closed and empty; `Some(None)` when empty.
    fn pop(&self) -> Option<Option<Job>> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        match jobs.0.pop_front() {
            Some(job) => Some(Some(job)),
            None if jobs.1 => None,
            None => Some(None),
        }
    }

    fn close(&self) {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
    }
}

/// Held by the worker thread: closes its queue and drops what is left in it when the
/// thread ends, even by a panic.
struct Closing(Arc<Queue>);

impl Drop for Closing {
    fn drop(&mut self) {
        let left = {
            let mut jobs = self.0.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            jobs.1 = true;
            std::mem::take(&mut jobs.0)
        };
        drop(left);
    }
}

/// Each call into a container, as a function of its slot, run on its worker thread: the
/// worker's own methods wrap them with a timeout; an isolated container's process
/// (`isolation/child.rs`) runs them on its one thread and answers the host.
pub mod calls {
    use std::time::Instant;

    use abi_stable::std_types::RStr;
    use balut_plugin_api::ffi::{FfiContainerBox, FfiHealthStatus, FfiHostArc};

    use super::{CallError, HealthReport, Library, convert};
    use crate::services::Handover;

    type Slot = Option<FfiContainerBox>;

    /// The constructor, filling the slot.
    pub fn construct(
        library: &Library,
        name: &str,
        config_json: String,
        host: FfiHostArc,
    ) -> impl FnOnce(&mut Slot) -> Result<(), CallError> + Send + 'static {
        let new_container = library.module().new_container();
        let name = name.to_owned();
        move |slot| {
            let built = convert(new_container(
                RStr::from_str(&name),
                RStr::from_str(&config_json),
                host,
            ))?;
            *slot = Some(built);
            Ok(())
        }
    }

    pub fn start(slot: &mut Slot) -> Result<(), CallError> {
        match slot {
            Some(container) => convert(container.start()),
            None => Err(CallError::NotConstructed),
        }
    }

    pub fn stop(slot: &mut Slot) -> Result<(), CallError> {
        match slot {
            Some(container) => convert(container.stop()),
            None => Err(CallError::NotConstructed),
        }
    }

    pub fn health(slot: &mut Slot) -> Result<HealthReport, CallError> {
        let began = Instant::now();
        let container = slot.as_mut().ok_or(CallError::NotConstructed)?;
        let health = convert(container.health())?;
        Ok(HealthReport {
            healthy: health.status == FfiHealthStatus::Healthy,
            message: health.message.into_string(),
            duration: began.elapsed(),
        })
    }

    pub fn ready(slot: &mut Slot) -> Result<Option<HealthReport>, CallError> {
        let began = Instant::now();
        let container = slot.as_mut().ok_or(CallError::NotConstructed)?;
        let Some(result) = container.ready().into_option() else {
            return Ok(None);
        };
        let health = convert(result)?;
        Ok(Some(HealthReport {
            healthy: health.status == FfiHealthStatus::Healthy,
            message: health.message.into_string(),
            duration: began.elapsed(),
        }))
    }

    pub fn handover(slot: &mut Slot) -> Result<Option<Handover>, CallError> {
        let container = slot.as_mut().ok_or(CallError::NotConstructed)?;
        match container.handover().into_option() {
            None => Ok(None),
            Some(result) => convert(result).map(|h| {
                Some(Handover {
                    version: h.version,
                    bytes: h.bytes.into_vec(),
                })
            }),
        }
    }

    /// Drops the plugin's value (reporting a panic in its `Drop`) and the handle.
    pub fn dispose(slot: &mut Slot) -> Result<(), CallError> {
        match slot.take() {
            Some(mut container) => {
                let result = convert(container.dispose());
                drop(container);
                result
            }
            None => Ok(()),
        }
    }
}

/// Owns one container's thread. Dropping it without [`Worker::finish`] abandons the thread.
pub struct Worker {
    jobs: Arc<Queue>,
    /// The thread, to wake it (`unpark`) and join it.
    thread: Option<JoinHandle<()>>,
    exited: Option<oneshot::Receiver<()>>,
    stuck: Arc<AtomicBool>,
    library: Arc<Library>,
}

impl Worker {
    /// Starts the thread for container `name` of `library`.
    pub fn spawn(name: &str, library: Arc<Library>) -> std::io::Result<Self> {
        let jobs = Arc::new(Queue::default());
        let queue = jobs.clone();
        let (exited_tx, exited) = oneshot::channel();
        let held = library.clone();
        let (container, generation) = (name.to_owned(), library.facts.generation);
        let thread = std::thread::Builder::new()
            .name(format!("balut:{name}"))
            .spawn(move || {
                // A crash or an `exit()` in the container's code names it.
                let _named =
                    crash::name_this_thread(crash::Role::Container, &container, generation);
                // However the loop ends, calls queued after it are dropped unrun, which
                // their callers see at once.
                let queue = Closing(queue);
                let mut slot: Slot = None;
                while let Some(job) = queue.0.pop() {
                    match job {
                        Some(job) => job.run(&mut slot),
                        // `push` unparks after queueing: a wake-up before this park makes
                        // it return at once, so none is lost.
                        None => std::thread::park(),
                    }
                }
                // Plugin code (the box's destructor) runs here, on this thread.
                drop(slot);
                drop(held);
                let _ = exited_tx.send(());
            })?;
        Ok(Self {
            jobs,
            thread: Some(thread),
            exited: Some(exited),
            stuck: Arc::new(AtomicBool::new(false)),
            library,
        })
    }

    /// The library generation this worker calls into.
    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }

    /// Whether a call overran its timeout.
    pub fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::SeqCst)
    }

    async fn call<R: Send + 'static>(
        &self,
        call: &'static str,
        timeout: Duration,
        overrun_is_stuck: bool,
        f: impl FnOnce(&mut Slot) -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        self.queue(call, timeout, overrun_is_stuck, |reply| {
            Job::Other(Box::new(move |slot| {
                let _ = reply.send(f(slot));
            }))
        })
        .await
    }

    /// Queues the job `make` builds around the reply's sender, wakes the thread and waits
    /// for the reply.
    async fn queue<R>(
        &self,
        call: &'static str,
        timeout: Duration,
        overrun_is_stuck: bool,
        make: impl FnOnce(Reply<R>) -> Job,
    ) -> Result<R, CallError> {
        if self.is_stuck() {
            return Err(CallError::Stuck);
        }
        let Some(thread) = &self.thread else {
            return Err(CallError::Stuck);
        };
        let (tx, rx) = oneshot::channel();
        if self.jobs.push(make(tx)).is_err() {
            return Err(CallError::Stuck);
        }
        thread.thread().unpark();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            // The job was dropped unrun: the thread is gone.
            Ok(Err(_)) => Err(CallError::Stuck),
            Err(_) => {
                if overrun_is_stuck {
                    self.stuck.store(true, Ordering::SeqCst);
                }
                Err(CallError::Timeout { call, timeout })
            }
        }
    }

    /// Runs the plugin's constructor for this container.
    pub async fn construct(
        &self,
        name: &str,
        config_json: String,
        host: FfiHostArc,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let job = calls::construct(&self.library, name, config_json, host);
        self.call("the constructor", timeout, true, job).await
    }

    pub async fn start(&self, timeout: Duration) -> Result<(), CallError> {
        self.call("start", timeout, true, calls::start).await
    }

    pub async fn stop(&self, timeout: Duration) -> Result<(), CallError> {
        self.call("stop", timeout, true, calls::stop).await
    }

    pub async fn health(&self, timeout: Duration) -> Result<HealthReport, CallError> {
        // A slow health check counts as a failed probe; the calls after it queue behind it,
        // and a stop that then overruns marks the worker stuck.
        self.queue("health", timeout, false, Job::Health).await
    }

    /// The readiness check; `None` when the plugin (built for interface 1.0) has none.
    pub async fn ready(&self, timeout: Duration) -> Result<Option<HealthReport>, CallError> {
        self.queue("ready", timeout, false, Job::Ready).await
    }

    /// The state the instance hands the next on a hot reload (interface 1.3; `None` from
    /// older plugins and from those that hand nothing over).
    pub async fn handover(&self, timeout: Duration) -> Result<Option<Handover>, CallError> {
        self.call("handover", timeout, true, calls::handover).await
    }

    /// Drops the plugin's value (reporting a panic in its `Drop`) and the handle.
    pub async fn dispose(&self, timeout: Duration) -> Result<(), CallError> {
        self.call("drop", timeout, true, calls::dispose).await
    }

    /// Ends the thread and joins it. Fails, abandoning the thread, if it is stuck or does
    /// not end within `timeout`.
    pub async fn finish(mut self, timeout: Duration) -> Result<(), CallError> {
        self.close();
        if self.is_stuck() {
            return Err(CallError::Stuck);
        }
        let exited = self.exited.take();
        let ended = match exited {
            Some(exited) => tokio::time::timeout(timeout, exited).await.is_ok(),
            None => false,
        };
        if !ended {
            self.stuck.store(true, Ordering::SeqCst);
            return Err(CallError::Timeout {
                call: "thread exit",
                timeout,
            });
        }
        if let Some(thread) = self.thread.take() {
            // The thread signalled its end; joining waits only for its thread-local
            // destructors, which must finish before the library may close.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Ok(())
    }
}

impl Worker {
    /// No more calls: the thread ends once it has run those queued (without parking in
    /// between). Calls made after this fail as [`CallError::Stuck`].
    pub fn close(&self) {
        self.jobs.close();
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // As a closed channel did: the thread runs what is queued, then ends on its own.
        self.close();
    }
}
