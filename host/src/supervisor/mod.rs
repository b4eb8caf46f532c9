//! The orchestrator: keeps the loaded plugin generations in line with the plugin folder,
//! registers containers at runtime, starts them in registration order, checks their health,
//! stops them in reverse order, and unloads a library generation as soon as none of its
//! containers has a live instance.
//!
//! It runs as one task that owns every container and library handle; the HTTP API and the
//! signal handler talk to it through [`SupervisorHandle`] and read state from the [`Board`].
//!
//! - `containers.rs`: registering, starting, stopping, health results, shutdown.
//! - `files.rs`: the folder: watching, settling, adding, reloading with rollback, removing.

mod containers;
mod files;
mod reload;
mod supervision;

pub use reload::{ReloadError, ReloadReport};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, HostConfig};
use crate::loader::{Library, Loader, Worker};
use crate::probes::{ProbeReport, ProbeSpec};
use crate::restart::{Backoff, RestartPolicy, Restarts};
use crate::services::{HostServices, NoticeFrom};
use crate::status::{Board, ContainerStatus, NotUnloaded, State};
use crate::watcher::{FolderEvent, FolderWatcher};

use files::Pending;

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

/// Errors of control requests (start, stop, restart).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no container named `{0}`")]
    UnknownContainer(String),
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// The outcome of stopping everything.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Containers that did not stop cleanly, with the reason.
    pub failures: Vec<(String, String)>,
    /// Library generations still mapped after their unload.
    pub not_unloaded: Vec<NotUnloaded>,
}

impl ShutdownReport {
    pub fn clean(&self) -> bool {
        self.failures.is_empty()
    }
}

enum Command {
    Start {
        name: String,
        reply: oneshot::Sender<Result<ContainerStatus, ControlError>>,
    },
    Stop {
        name: String,
        reply: oneshot::Sender<Result<ContainerStatus, ControlError>>,
    },
    Restart {
        name: String,
        reply: oneshot::Sender<Result<ContainerStatus, ControlError>>,
    },
    Probe {
        name: String,
        instance: u64,
        report: ProbeReport,
    },
    Reload {
        reply: oneshot::Sender<Result<ReloadReport, ReloadError>>,
    },
    Shutdown {
        reply: oneshot::Sender<ShutdownReport>,
    },
}

/// A cheap handle for sending requests to the supervisor task.
#[derive(Clone)]
pub struct SupervisorHandle {
    commands: mpsc::Sender<Command>,
}

impl SupervisorHandle {
    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, response) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        response.await.ok()
    }

    pub async fn start(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        let name = name.to_owned();
        self.request(|reply| Command::Start { name, reply })
            .await
            .unwrap_or(Err(ControlError::ShuttingDown))
    }

    pub async fn stop(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        let name = name.to_owned();
        self.request(|reply| Command::Stop { name, reply })
            .await
            .unwrap_or(Err(ControlError::ShuttingDown))
    }

    /// Stops the container if it runs and starts it again, clearing its restart counters
    /// (also out of quarantine).
    pub async fn restart(&self, name: &str) -> Result<ContainerStatus, ControlError> {
        let name = name.to_owned();
        self.request(|reply| Command::Restart { name, reply })
            .await
            .unwrap_or(Err(ControlError::ShuttingDown))
    }

    /// Reads the config file again and applies the difference.
    pub async fn reload(&self) -> Option<Result<ReloadReport, ReloadError>> {
        self.request(|reply| Command::Reload { reply }).await
    }

    /// Stops everything in reverse order and unloads every library.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.request(|reply| Command::Shutdown { reply })
            .await
            .unwrap_or_default()
    }
}

/// A live instance of a container: its worker thread and its probe task.
struct Instance {
    /// Unique per instance, so results of an instance that is gone are told apart.
    id: u64,
    worker: Arc<Worker>,
    services: HostServices,
    probe_task: Option<JoinHandle<()>>,
}

/// What keeps a container that should run from being started now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Nothing: start it as soon as what it requires is ready.
    Free,
    /// Backoff or quarantine: not before this time.
    Until(tokio::time::Instant),
    /// Failed, and its restart policy says no: only a manual start brings it back.
    Failed,
}

/// A registered container.
struct Container {
    name: String,
    plugin: String,
    /// Declared in the config file (else the plugin's default instance).
    configured: bool,
    /// Whether it should run: false after a stop request, true after a start request.
    wanted: bool,
    config_json: String,
    start_timeout: Duration,
    stop_timeout: Duration,
    /// Names of the containers that must be ready before this one starts.
    requires: Vec<String>,
    policy: RestartPolicy,
    backoff: Backoff,
    liveness: Option<ProbeSpec>,
    readiness: Option<ProbeSpec>,
    restarts: Restarts,
    hold: Hold,
    /// Live and ready (readiness is pushed by the plugin or set by the probe).
    ready: bool,
    instance: Option<Instance>,
}

/// A plugin file in the folder and what the host made of it.
#[derive(Default)]
struct PluginFile {
    /// The declared plugin name of its last good content.
    plugin: Option<String>,
    /// The generation in memory, if any.
    library: Option<Arc<Library>>,
    /// The last content (hash) or condition this file was judged on, so the same content
    /// is never loaded or reported twice.
    seen: Option<String>,
    /// Size, modification time and inode at the last look, for cheap rescans.
    stamp: Option<files::Stamp>,
}

pub struct Supervisor {
    settings: Settings,
    host: HostConfig,
    loader: Loader,
    board: Board,
    containers: Vec<Container>,
    /// Plugin files by path, sorted.
    files: BTreeMap<PathBuf, PluginFile>,
    /// Which file provides each plugin name.
    providers: HashMap<String, PathBuf>,
    commands: mpsc::Sender<Command>,
    inbox: mpsc::Receiver<Command>,
    folder_events: mpsc::UnboundedReceiver<FolderEvent>,
    folder_sender: mpsc::UnboundedSender<FolderEvent>,
    watcher: Option<FolderWatcher>,
    pending: Pending,
    notices: mpsc::UnboundedReceiver<NoticeFrom>,
    notice_sender: mpsc::UnboundedSender<NoticeFrom>,
    next_instance: u64,
    /// During the first scan: load and register, start later all together.
    starting_up: bool,
    shutting_down: bool,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl Supervisor {
    pub fn new(settings: Settings, board: Board) -> std::io::Result<Self> {
        let host = settings.config.host.clone();
        let loader = Loader::new(host.copy_dir.as_deref(), host.load_timeout_ms.duration())?;
        let (commands, inbox) = mpsc::channel(256);
        let (folder_sender, folder_events) = mpsc::unbounded_channel();
        let (notice_sender, notices) = mpsc::unbounded_channel();
        Ok(Self {
            settings,
            host,
            loader,
            board,
            containers: Vec::new(),
            files: BTreeMap::new(),
            providers: HashMap::new(),
            commands,
            inbox,
            folder_events,
            folder_sender,
            watcher: None,
            pending: Pending::default(),
            notices,
            notice_sender,
            next_instance: 0,
            starting_up: false,
            shutting_down: false,
        })
    }

    pub fn handle(&self) -> SupervisorHandle {
        SupervisorHandle {
            commands: self.commands.clone(),
        }
    }

    pub fn private_dir(&self) -> &Path {
        self.loader.private_dir()
    }

    /// Serves requests and folder changes until shutdown; returns the shutdown report.
    pub async fn run(mut self) -> ShutdownReport {
        let period = self.host.rescan_interval_ms.duration();
        let mut rescans = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        rescans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.converge().await;
            let due = self.pending.next_due();
            let retry = self.next_retry();
            tokio::select! {
                command = self.inbox.recv() => {
                    let Some(command) = command else { break };
                    if let Some(reply) = self.on_command(command).await {
                        let report = self.shutdown().await;
                        let _ = reply.send(report);
                        return ShutdownReport::default();
                    }
                }
                Some(event) = self.folder_events.recv() => self.on_folder_event(event),
                Some(notice) = self.notices.recv() => self.on_notice(notice).await,
                _ = sleep_until(due), if due.is_some() => self.settle_due().await,
                _ = sleep_until(retry), if retry.is_some() => self.release_due_holds(),
                _ = rescans.tick() => self.rescan(false),
            }
        }
        self.shutdown().await
    }

    /// Handles one command; returns the reply channel when it is a shutdown request.
    async fn on_command(&mut self, command: Command) -> Option<oneshot::Sender<ShutdownReport>> {
        match command {
            Command::Start { name, reply } => {
                let result = match self.index_of(&name) {
                    Some(index) => {
                        self.containers[index].wanted = true;
                        self.containers[index].restarts.clear();
                        self.start_container(index).await;
                        self.status_of(index)
                    }
                    None => Err(ControlError::UnknownContainer(name)),
                };
                let _ = reply.send(result);
            }
            Command::Restart { name, reply } => {
                let result = match self.index_of(&name) {
                    Some(index) => {
                        self.restart_by_hand(index).await;
                        self.status_of(index)
                    }
                    None => Err(ControlError::UnknownContainer(name)),
                };
                let _ = reply.send(result);
            }
            Command::Stop { name, reply } => {
                let result = match self.index_of(&name) {
                    Some(index) => {
                        self.containers[index].wanted = false;
                        self.containers[index].hold = Hold::Free;
                        self.stop_dependents(index, "was stopped").await;
                        // A failed stop is reported in the container's status.
                        let _ = self
                            .stop_container(index, self.containers[index].stop_timeout)
                            .await;
                        let idle = self.containers[index].instance.is_none();
                        let parked = self.board.container(&name).is_some_and(|s| {
                            matches!(
                                s.state,
                                State::Waiting | State::Backoff | State::Quarantined
                            )
                        });
                        if idle && parked {
                            self.set_state(&name, State::Stopped, None);
                        }
                        self.status_of(index)
                    }
                    None => Err(ControlError::UnknownContainer(name)),
                };
                let _ = reply.send(result);
            }
            Command::Probe {
                name,
                instance,
                report,
            } => self.on_probe(&name, instance, report).await,
            Command::Reload { reply } => {
                let _ = reply.send(self.reload_config().await);
            }
            Command::Shutdown { reply } => return Some(reply),
        }
        None
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.name == name)
    }

    fn status_of(&self, index: usize) -> Result<ContainerStatus, ControlError> {
        let name = &self.containers[index].name;
        self.board
            .container(name)
            .ok_or_else(|| ControlError::UnknownContainer(name.clone()))
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
