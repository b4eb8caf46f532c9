//! How the rest of the host talks to the supervisor task: commands over a bounded channel,
//! each with a reply, and a shared flag that says whether the supervisor still serves
//! (so a request made while it shuts down or after it failed is answered at once).

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::model::{ContainerStatus, NotUnloaded};
use crate::probes::ProbeReport;

/// Errors of control requests (start, stop, restart).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("no container named `{0}`")]
    UnknownContainer(String),
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The supervisor failed (a bug); the host is stopping everything and exiting.
    #[error("internal error: the supervisor failed ({0}); the host is exiting")]
    SupervisorFailed(String),
}

/// What a config reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that only take effect when balut restarts.
    pub needs_restart: Vec<String>,
}

/// Why a reload was refused (the old config stays in force).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: balut was started without --config")]
    NoConfigFile,
    #[error("{0}; the old config stays in force")]
    Invalid(String),
    /// Plugins' own config types refused containers' configs (each names its key path).
    #[error("{}; the old config stays in force", .0.join("; "))]
    ConfigRefused(Vec<String>),
    #[error("{0}")]
    Unavailable(String),
}

/// A container that did not stop cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopFailure {
    pub container: String,
    pub reason: String,
}

/// The outcome of stopping everything.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    pub failures: Vec<StopFailure>,
    /// Library generations still mapped after their unload.
    pub not_unloaded: Vec<NotUnloaded>,
}

impl ShutdownReport {
    pub fn clean(&self) -> bool {
        self.failures.is_empty()
    }
}

/// How the supervisor task ended.
#[derive(Debug)]
pub enum Outcome {
    /// Asked to shut down (or every handle dropped): it stopped everything.
    Stopped(ShutdownReport),
    /// It panicked; it stopped what it could.
    Panicked(String),
}

pub(super) type Reply<T> = oneshot::Sender<T>;

pub(super) enum Command {
    Start {
        name: String,
        reply: Reply<Result<ContainerStatus, ControlError>>,
    },
    Stop {
        name: String,
        reply: Reply<Result<ContainerStatus, ControlError>>,
    },
    Restart {
        name: String,
        reply: Reply<Result<ContainerStatus, ControlError>>,
    },
    Reload {
        reply: Reply<Result<ReloadReport, ReloadError>>,
    },
    /// The simulation's look at the supervisor's own state. The supervisor then waits
    /// for `resume`, so the world holds still while the invariants are checked.
    #[cfg(test)]
    Inspect {
        reply: Reply<super::sim::Inspection>,
        resume: oneshot::Receiver<()>,
    },
}

/// A probe result of one instance, sent by its probe task.
pub(super) struct ProbeMessage {
    pub name: String,
    pub instance: u64,
    pub report: ProbeReport,
}

/// Whether the supervisor serves requests.
#[derive(Debug, Clone, Default)]
pub(super) enum Serving {
    #[default]
    Yes,
    ShuttingDown,
    Failed(String),
}

/// Shared between the supervisor and its handles.
#[derive(Debug)]
pub(super) struct Shared {
    serving: Mutex<Serving>,
    /// When a shutdown was asked for: the budget counts from then, whatever the supervisor
    /// was doing. A watch, so asking never waits and the supervisor sees it mid-step.
    stop: watch::Sender<Option<Instant>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            serving: Mutex::default(),
            stop: watch::channel(None).0,
        }
    }
}

impl Shared {
    /// A receiver that sees the shutdown request.
    pub fn stop_requests(&self) -> watch::Receiver<Option<Instant>> {
        self.stop.subscribe()
    }

    /// When the shutdown was asked for, if it was.
    pub fn stop_requested_at(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    pub fn set(&self, serving: Serving) {
        *self.serving.lock().unwrap_or_else(PoisonError::into_inner) = serving;
    }

    fn get(&self) -> Serving {
        self.serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why a request cannot be served now, if it cannot.
    fn refusal(&self) -> Option<ControlError> {
        match self.get() {
            Serving::Yes => None,
            Serving::ShuttingDown => Some(ControlError::ShuttingDown),
            Serving::Failed(why) => Some(ControlError::SupervisorFailed(why)),
        }
    }
}

/// A cheap handle for sending requests to the supervisor task.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) shared: Arc<Shared>,
}

impl SupervisorHandle {
    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ControlError> {
        if let Some(refused) = self.shared.refusal() {
            return Err(refused);
        }
        let (reply, response) = oneshot::channel();
        let gone = || self.shared.refusal().unwrap_or(ControlError::ShuttingDown);
        self.commands.send(make(reply)).await.map_err(|_| gone())?;
        response.await.map_err(|_| gone())
    }

    pub async fn start(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        let name = name.to_owned();
        self.request(|reply| Command::Start { name, reply }).await?
    }

    pub async fn stop(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        let name = name.to_owned();
        self.request(|reply| Command::Stop { name, reply }).await?
    }

    /// Stops the container if it runs and starts it again, clearing its restart counters
    /// (also out of quarantine).
    pub async fn restart(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        let name = name.to_owned();
        self.request(|reply| Command::Restart { name, reply })
            .await?
    }

    /// Reads the config file again and applies the difference.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        match self.request(|reply| Command::Reload { reply }).await {
            Ok(result) => result,
            Err(e) => Err(ReloadError::Unavailable(e.to_string())),
        }
    }

    /// Asks the supervisor to stop everything (in reverse dependency order, within the
    /// shutdown budget counted from now) and end; its task's [`Outcome`] carries the report.
    /// Never waits: starts in flight and queued requests are given up.
    pub fn begin_shutdown(&self) {
        self.shared.stop.send_if_modified(|at| {
            let first = at.is_none();
            at.get_or_insert_with(Instant::now);
            first
        });
    }

    /// The supervisor's state; it holds still until the returned sender is used or
    /// dropped.
    #[cfg(test)]
    pub(super) async fn inspect(&self) -> Option<(super::sim::Inspection, oneshot::Sender<()>)> {
        let (reply, response) = oneshot::channel();
        let (resume, resumed) = oneshot::channel();
        let command = Command::Inspect {
            reply,
            resume: resumed,
        };
        self.commands.send(command).await.ok()?;
        Some((response.await.ok()?, resume))
    }
}
