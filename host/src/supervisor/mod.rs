//! The orchestrator: keeps the loaded plugin generations in line with the plugin folder,
//! registers containers at runtime, starts them in dependency order, checks their health,
//! restarts them by their policy, stops them in reverse order, and unloads every
//! generation no live container uses.
//!
//! It runs as one task that owns all of that state; the HTTP API and the signal handler
//! talk to it through a [`SupervisorHandle`] and read the [`Board`], a projection of the
//! state it owns. The task handles one thing at a time (a command, a folder event, a probe
//! result, a notice, a timer); after each it starts what is due and unloads what is unused.
//! Each piece of state has its module:
//!
//! - `set.rs`: the containers by name, their specs, holds and statuses;
//! - `generations.rs`: plugin files and library generations, the sweep that unloads;
//! - `folder.rs`: which names are due for a look; `admission.rs`: what a look means;
//! - `swap.rs`: adding, hot-swapping with rollback and removing a file's plugin;
//! - `lifecycle.rs`: the calls that start and stop an instance;
//! - `policy.rs`: dependencies, failures and restarts, probe results, notices;
//! - `reload.rs`: config reload as a pure `diff(old, new) -> Plan`, checked, then applied;
//! - `handle.rs`: the commands and the handle.

mod admission;
mod closing;
mod folder;
mod generations;
mod handle;
mod intake;
mod lifecycle;
mod overlap;
mod policy;
mod reload;
mod set;
mod shutdown;
#[cfg(test)]
mod sim;
mod swap;
mod teardown;

#[cfg(test)]
pub use handle::ShutdownReport;
pub use handle::{ControlError, Outcome, ReloadError, SupervisorHandle};

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::error;

use crate::config::{Config, HostConfig};
use crate::model::{ContainerStatus, State};
use crate::platform::{LookRules, Platform, Unloaded};
use crate::services::{Handover, NoticeFrom};
use crate::sockets::Sockets;
use crate::status::Board;
use crate::watcher::FolderEvent;

use closing::Closing;
use folder::{Pending, Watch};
use generations::Generations;
use handle::{Command, ProbeMessage, Serving, Shared, StopFailure};
use set::{Containers, Hold};

/// What to run: where plugins are and how containers are configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The plugin folder, absolute and canonical.
    pub plugin_dir: PathBuf,
    pub config: Config,
    /// The config file, read again on reload.
    pub config_path: Option<PathBuf>,
    /// Refuse folders and files writable by other users (see `trust.rs`).
    pub strict_modes: bool,
}

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first scan: load and register everything, start it all together afterwards.
    StartingUp,
    Running,
    ShuttingDown,
}

/// The receiving ends of everything the supervisor task listens to, and senders to clone.
struct Inbox {
    commands: mpsc::Receiver<Command>,
    command_sender: mpsc::Sender<Command>,
    folder: mpsc::UnboundedReceiver<FolderEvent>,
    folder_sender: mpsc::UnboundedSender<FolderEvent>,
    probes: mpsc::Receiver<ProbeMessage>,
    probe_sender: mpsc::Sender<ProbeMessage>,
    notices: mpsc::UnboundedReceiver<NoticeFrom>,
    notice_sender: mpsc::UnboundedSender<NoticeFrom>,
    /// Closes of generations, reported by the threads that ran them.
    closes: mpsc::UnboundedReceiver<Unloaded>,
}

/// What one turn of the loop asks for next.
enum Flow {
    Continue,
    Shutdown,
}

pub struct Supervisor<P: Platform> {
    settings: Settings,
    /// The host settings in force (those that need a restart keep their start values).
    host: HostConfig,
    platform: P,
    board: Board,
    containers: Containers<P::Worker>,
    files: Generations<P::Library>,
    pending: Pending,
    watch: Watch,
    inbox: Inbox,
    shared: Arc<Shared>,
    next_instance: u64,
    /// Workers spawned ahead for a hot swap (process isolation: the new generation's
    /// process starts, and opens it, before the old instance stops); taken by the start.
    spares: HashMap<String, P::Worker>,
    /// The listening sockets held for containers.
    sockets: Sockets,
    /// Containers whose instance, being stopped for a stop-first hot reload, hands its
    /// state over when stopped; and the states handed over, until the next instance takes
    /// them.
    keep_state: HashSet<String>,
    handed_over: HashMap<String, Handover>,
    /// Backoff jitter; seeded, so a simulation replays exactly.
    rng: fastrand::Rng,
    phase: Phase,
    /// Starts given up when the shutdown began: they count as not stopped cleanly.
    given_up: Vec<StopFailure>,
    /// For the simulation: each start, with whether each requirement was running and
    /// ready at that moment.
    #[cfg(test)]
    starts: Vec<(String, Vec<(String, bool)>)>,
}

impl<P: Platform> Supervisor<P> {
    pub fn new(settings: Settings, board: Board, platform: P, seed: u64) -> Self {
        let host = settings.config.host.clone();
        let (command_sender, commands) = mpsc::channel(256);
        let (folder_sender, folder) = mpsc::unbounded_channel();
        let (probe_sender, probes) = mpsc::channel(64);
        let (notice_sender, notices) = mpsc::unbounded_channel();
        let (close_sender, closes) = mpsc::unbounded_channel();
        let closing = Closing::new(board.clone(), close_sender, host.load_timeout_ms.duration());
        Self {
            settings,
            host,
            platform,
            containers: Containers::new(board.clone()),
            files: Generations::new(board.clone(), closing),
            board,
            pending: Pending::default(),
            watch: Watch::default(),
            inbox: Inbox {
                commands,
                command_sender,
                folder,
                folder_sender,
                probes,
                probe_sender,
                notices,
                notice_sender,
                closes,
            },
            shared: Arc::default(),
            next_instance: 0,
            spares: HashMap::new(),
            sockets: Sockets::default(),
            keep_state: HashSet::new(),
            handed_over: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::StartingUp,
            given_up: Vec::new(),
            #[cfg(test)]
            starts: Vec::new(),
        }
    }

    pub fn handle(&self) -> SupervisorHandle {
        SupervisorHandle {
            commands: self.inbox.command_sender.clone(),
            shared: self.shared.clone(),
        }
    }

    fn look_rules(&self) -> LookRules {
        LookRules {
            plugin_dir: self.settings.plugin_dir.clone(),
            strict_modes: self.settings.strict_modes,
            max_bytes: self.host.max_plugin_bytes.get(),
        }
    }

    /// The whole life: the first scan and start (`start_all`; `started` is told how it
    /// went), then [`Self::run`]. A panic in the first scan is handled as one in any step.
    pub async fn start_and_run(
        mut self,
        started: impl FnOnce(std::io::Result<()>) + Send,
    ) -> Outcome {
        match AssertUnwindSafe(self.start_all()).catch_unwind().await {
            Ok(result) => started(result),
            Err(panic) => {
                started(Ok(()));
                return self.after_panic(panic).await;
            }
        }
        self.run().await
    }

    /// Serves requests and folder changes until shutdown. A panic in any step is caught:
    /// the supervisor then refuses requests, stops what it can and reports the panic.
    pub async fn run(mut self) -> Outcome {
        let period = self.host.rescan_interval_ms.duration();
        let mut rescans = tokio::time::interval_at(Instant::now() + period, period);
        rescans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = AssertUnwindSafe(self.step(&mut rescans))
                .catch_unwind()
                .await;
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Shutdown) => {
                    self.shared.set(Serving::ShuttingDown);
                    let report = self.shutdown().await;
                    return Outcome::Stopped(report);
                }
                Err(panic) => return self.after_panic(panic).await,
            }
        }
    }

    async fn after_panic(mut self, panic: Box<dyn std::any::Any + Send>) -> Outcome {
        let message = panic_message(&*panic);
        error!(panic = %message, "the supervisor panicked (a bug in balut); stopping every container and exiting");
        self.shared.set(Serving::Failed(message.clone()));
        if AssertUnwindSafe(self.shutdown())
            .catch_unwind()
            .await
            .is_err()
        {
            error!("stopping the containers after the panic panicked too; exiting as they are");
        }
        Outcome::Panicked(message)
    }

    /// One turn: start what is due, unload what is unused, then wait for one thing to
    /// happen and handle it.
    async fn step(&mut self, rescans: &mut tokio::time::Interval) -> Flow {
        // A stop asked for while the last turn was busy: nothing more starts.
        if self.shared.stop_requested_at().is_some() {
            return Flow::Shutdown;
        }
        // Starting first: a container restarting at once reuses its generation in memory.
        self.converge().await;
        self.files
            .sweep(&mut self.platform, &self.containers.awaiting_restart());
        let due = self.pending.next_due();
        let retry = self.containers.next_retry();
        let folder_look = self.watch.next_look;
        let close_due = self.files.next_close_due();
        // Biased: one fixed order, so a simulated sequence replays exactly.
        let mut stop = self.shared.stop_requests();
        let flow = tokio::select! {
            biased;
            () = stopped(&mut stop) => Flow::Shutdown,
            Some(closed) = self.inbox.closes.recv() => {
                self.files.closed(closed);
                Flow::Continue
            }
            command = self.inbox.commands.recv() => match command {
                Some(command) => self.on_command(command).await,
                // Every handle is gone: nobody can ask any more.
                None => Flow::Shutdown,
            },
            Some(probe) = self.inbox.probes.recv() => {
                self.on_probe(&probe.name, probe.instance, probe.report).await;
                Flow::Continue
            }
            Some(notice) = self.inbox.notices.recv() => {
                self.on_notice(notice).await;
                Flow::Continue
            }
            Some(event) = self.inbox.folder.recv() => {
                self.on_folder_event(event);
                Flow::Continue
            }
            _ = sleep_until(due), if due.is_some() => {
                self.settle_due().await;
                Flow::Continue
            }
            _ = sleep_until(retry), if retry.is_some() => {
                self.containers.release_due_holds(Instant::now());
                Flow::Continue
            }
            _ = sleep_until(close_due), if close_due.is_some() => {
                self.files.close_overdue(Instant::now());
                Flow::Continue
            }
            _ = sleep_until(folder_look), if folder_look.is_some() => {
                self.check_folder();
                Flow::Continue
            }
            _ = rescans.tick() => {
                self.check_folder();
                self.rescan(false);
                Flow::Continue
            }
        };
        flow
    }

    async fn on_command(&mut self, command: Command) -> Flow {
        match command {
            Command::Start { name, reply } => {
                let result = self.start_by_hand(&name).await;
                let _ = reply.send(result);
            }
            Command::Restart { name, reply } => {
                let result = self.restart_by_hand(&name).await;
                let _ = reply.send(result);
            }
            Command::Stop { name, reply } => {
                let result = self.stop_by_hand(&name).await;
                let _ = reply.send(result);
            }
            Command::Reload { reply } => {
                let _ = reply.send(self.reload_config().await);
            }
            #[cfg(test)]
            Command::Inspect { reply, resume } => {
                let _ = reply.send(self.inspect());
                let _ = resume.await;
            }
        }
        Flow::Continue
    }

    fn status_of(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        self.containers
            .get(name)
            .map(|c| c.status().clone())
            .ok_or_else(|| ControlError::UnknownContainer(name.to_owned()))
    }

    async fn start_by_hand(&mut self, name: &str) -> Result<ContainerStatus, ControlError> {
        let container = self
            .containers
            .get_mut(name)
            .ok_or_else(|| ControlError::UnknownContainer(name.to_owned()))?;
        container.wanted = true;
        container.restarts.clear();
        self.containers.show(name, |s| s.restarts = 0);
        self.start_now(name).await;
        self.status_of(name)
    }

    async fn stop_by_hand(&mut self, name: &str) -> Result<ContainerStatus, ControlError> {
        let container = self
            .containers
            .get_mut(name)
            .ok_or_else(|| ControlError::UnknownContainer(name.to_owned()))?;
        container.wanted = false;
        container.hold = Hold::Free;
        self.stop_dependents(name, "was stopped").await;
        // A failed stop is reported in the container's status.
        let _ = self.stop_container(name).await;
        let parked = self.containers.get(name).is_some_and(|c| {
            !c.is_live()
                && matches!(
                    c.state(),
                    State::Waiting | State::Backoff | State::Quarantined
                )
        });
        if parked {
            self.containers.set_state(name, State::Stopped, None);
        }
        self.status_of(name)
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Resolves once a shutdown is asked for (never, if the sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<Option<Instant>>) {
    if stop.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
