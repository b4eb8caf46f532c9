//! The orchestrator: registers containers at runtime, starts them in registration order,
//! checks their health, stops them in reverse order, and unloads a library generation as
//! soon as none of its containers has a live instance.
//!
//! It runs as one task that owns every container and library handle; the HTTP API and the
//! signal handler talk to it through [`SupervisorHandle`], and read state from the
//! [`Board`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{Config, HostConfig};
use crate::loader::{CallError, HealthReport, Library, LoadError, Loader, Worker};
use crate::services::HostServices;
use crate::status::{
    Board, ContainerStatus, FileState, HealthStatus, NotUnloaded, PluginStatus, State, rfc3339,
};

/// What to run: where plugins are and how containers are configured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub plugin_dir: PathBuf,
    pub config: Config,
}

/// Errors of control requests (start, stop).
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
    Health {
        name: String,
        generation: u64,
        result: Result<HealthReport, CallError>,
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

    /// Stops everything in reverse order and unloads every library.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.request(|reply| Command::Shutdown { reply })
            .await
            .unwrap_or_default()
    }
}

/// A live instance of a container: its worker thread and its health-check task.
struct Instance {
    worker: Arc<Worker>,
    services: HostServices,
    health_task: Option<JoinHandle<()>>,
}

/// A registered container.
struct Container {
    name: String,
    plugin: String,
    config_json: String,
    start_timeout: Duration,
    stop_timeout: Duration,
    instance: Option<Instance>,
}

/// A plugin file found in the folder and what the loader made of it.
struct PluginFile {
    /// The declared plugin name, once known.
    plugin: Option<String>,
    /// The generation in memory, if any.
    library: Option<Arc<Library>>,
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

    /// Loads every plugin file in the folder, registers the containers, starts them all in
    /// registration order.
    pub async fn start_all(&mut self) -> std::io::Result<()> {
        let paths = scan_plugin_dir(&self.settings.plugin_dir)?;
        for path in paths {
            self.load_file(&path).await;
        }
        self.register_containers();
        for index in 0..self.containers.len() {
            self.start_container(index).await;
        }
        for path in self.files.keys().cloned().collect::<Vec<_>>() {
            self.release_library_if_unused(&path, None);
        }
        Ok(())
    }

    /// Serves requests until shutdown, then returns the shutdown report.
    pub async fn run(mut self) -> ShutdownReport {
        while let Some(command) = self.inbox.recv().await {
            match command {
                Command::Start { name, reply } => {
                    let result = match self.index_of(&name) {
                        Some(index) => {
                            self.start_container(index).await;
                            self.status_of(index)
                        }
                        None => Err(ControlError::UnknownContainer(name)),
                    };
                    let _ = reply.send(result);
                }
                Command::Stop { name, reply } => {
                    let result = match self.index_of(&name) {
                        Some(index) => {
                            // A failed stop is reported in the container's status.
                            let _ = self
                                .stop_container(index, self.containers[index].stop_timeout)
                                .await;
                            self.status_of(index)
                        }
                        None => Err(ControlError::UnknownContainer(name)),
                    };
                    let _ = reply.send(result);
                }
                Command::Health {
                    name,
                    generation,
                    result,
                } => self.on_health(&name, generation, result).await,
                Command::Shutdown { reply } => {
                    let report = self.shutdown().await;
                    let _ = reply.send(report);
                    return ShutdownReport::default();
                }
            }
        }
        self.shutdown().await
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

    /// Loads `path` as a new generation, recording the outcome on the board.
    async fn load_file(&mut self, path: &Path) -> Option<Arc<Library>> {
        let file = file_name(path);
        let result = self.loader.load(path).await;
        let entry = self
            .files
            .entry(path.to_owned())
            .or_insert_with(|| PluginFile {
                plugin: None,
                library: None,
            });
        match result {
            Ok(library) => {
                let name = library.info.name.clone();
                if let Some(other) = self.providers.get(&name).filter(|other| *other != path) {
                    let message = format!(
                        "{}: plugin `{name}` is already provided by {}",
                        path.display(),
                        other.display()
                    );
                    error!(file, error = %message, "plugin file refused");
                    self.board
                        .set_plugin(error_status(&file, "duplicate_plugin", message));
                    self.files.remove(path);
                    // Nothing else holds it yet, so this unloads it.
                    let _ = library.unload();
                    return None;
                }
                info!(
                    file,
                    plugin = %name,
                    version = %library.info.version,
                    generation = library.generation,
                    copy = %library.copy.display(),
                    "library loaded"
                );
                self.providers.insert(name.clone(), path.to_owned());
                entry.plugin = Some(name);
                entry.library = Some(library.clone());
                self.board.set_plugin(loaded_status(&file, &library));
                Some(library)
            }
            Err(load_error) => {
                error!(file, kind = load_error.kind(), error = %load_error, "plugin file refused");
                let mut status = error_status(&file, load_error.kind(), load_error.to_string());
                status.name = load_error.plugin().map(str::to_owned);
                if let LoadError::InterfaceMismatch {
                    plugin_interface, ..
                } = &load_error
                {
                    status.interface_version = Some(plugin_interface.to_string());
                }
                self.board.set_plugin(status);
                if let LoadError::LayoutMismatch { plugin, .. } = &load_error {
                    self.board.write().not_unloaded.push(NotUnloaded {
                        file: file.clone(),
                        plugin: plugin.clone(),
                        generation: 0,
                        copy: String::new(),
                        reason: "failed abi_stable's layout check; kept mapped because abi_stable may hold pointers into it"
                            .into(),
                    });
                }
                self.files.remove(path);
                None
            }
        }
    }

    /// Registers the containers: per plugin file (in file-name order) its configured
    /// instances (in config order), or one instance named after the plugin; then configured
    /// instances whose plugin is not in the folder.
    fn register_containers(&mut self) {
        let config = self.settings.config.clone();
        let mut registered: Vec<Container> = Vec::new();
        let new =
            |name: &str, plugin: &str, cfg: Option<&crate::config::ContainerConfig>| Container {
                name: name.to_owned(),
                plugin: plugin.to_owned(),
                config_json: cfg.map_or_else(|| "{}".to_owned(), |c| c.config_json()),
                start_timeout: cfg
                    .and_then(|c| c.start_timeout_ms)
                    .unwrap_or(self.host.start_timeout_ms)
                    .duration(),
                stop_timeout: cfg
                    .and_then(|c| c.stop_timeout_ms)
                    .unwrap_or(self.host.stop_timeout_ms)
                    .duration(),
                instance: None,
            };
        for plugin in self.files.values().filter_map(|f| f.plugin.as_deref()) {
            let configured: Vec<_> = config
                .containers
                .iter()
                .filter(|(_, c)| c.plugin == plugin)
                .collect();
            if configured.is_empty() {
                if config.containers.keys().any(|n| n.as_str() == plugin) {
                    // A configured container already uses this name for another plugin.
                    continue;
                }
                registered.push(new(plugin, plugin, None));
            }
            for (name, cfg) in configured {
                registered.push(new(name.as_str(), plugin, Some(cfg)));
            }
        }
        for (name, cfg) in &config.containers {
            if !registered.iter().any(|c| c.name == name.as_str()) {
                registered.push(new(name.as_str(), &cfg.plugin, Some(cfg)));
            }
        }
        let now = rfc3339(SystemTime::now());
        self.board.write().containers = registered
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                plugin: c.plugin.clone(),
                version: None,
                state: State::Stopped,
                since: now.clone(),
                last_error: None,
                generation: None,
                file: None,
                loaded_at: None,
                sha256: None,
                health: None,
            })
            .collect();
        for container in &registered {
            info!(container = %container.name, plugin = %container.plugin, "container registered");
        }
        self.containers = registered;
    }

    fn set_state(&self, name: &str, state: State, error: Option<String>) {
        self.board.update_container(name, |status| {
            status.state = state;
            status.since = rfc3339(SystemTime::now());
            if error.is_some() || state == State::Starting {
                status.last_error = error;
            }
            if state == State::Starting {
                status.health = None;
            }
        });
    }

    fn fail(&self, name: &str, error: String) {
        error!(container = %name, error = %error, "container failed");
        self.set_state(name, State::Failed, Some(error));
    }

    /// The library for `plugin`: the generation in memory, or a fresh load of its file.
    async fn library_for(&mut self, plugin: &str) -> Result<Arc<Library>, String> {
        let Some(path) = self.providers.get(plugin).cloned() else {
            return Err(format!(
                "no plugin named `{plugin}` in {}",
                self.settings.plugin_dir.display()
            ));
        };
        if let Some(library) = self.files.get(&path).and_then(|f| f.library.clone()) {
            return Ok(library);
        }
        match self.load_file(&path).await {
            Some(library) => Ok(library),
            None => Err(self
                .board
                .read()
                .plugins
                .iter()
                .find(|p| p.file == file_name(&path))
                .and_then(|p| p.error.clone())
                .unwrap_or_else(|| format!("{}: could not be loaded", path.display()))),
        }
    }

    /// Constructs and starts container `index` unless it is already live.
    async fn start_container(&mut self, index: usize) {
        if self.containers[index].instance.is_some() {
            return;
        }
        let name = self.containers[index].name.clone();
        let plugin = self.containers[index].plugin.clone();
        self.set_state(&name, State::Starting, None);
        info!(container = %name, "container starting");
        let library = match self.library_for(&plugin).await {
            Ok(library) => library,
            Err(message) => return self.fail(&name, message),
        };
        self.board.update_container(&name, |status| {
            status.version = Some(library.info.version.clone());
            status.generation = Some(library.generation);
            status.file = Some(file_name(&library.file));
            status.loaded_at = Some(rfc3339(library.loaded_at));
            status.sha256 = Some(library.short_hash().to_owned());
        });
        let worker = match Worker::spawn(&name, library.clone()) {
            Ok(worker) => Arc::new(worker),
            Err(e) => return self.fail(&name, format!("cannot spawn its thread: {e}")),
        };
        let (config_json, start_timeout) = {
            let c = &self.containers[index];
            (c.config_json.clone(), c.start_timeout)
        };
        let mut instance = Instance {
            worker,
            services: HostServices::new(&name, library.generation),
            health_task: None,
        };
        let constructed = instance
            .worker
            .construct(
                &name,
                config_json,
                instance.services.to_ffi(),
                start_timeout,
            )
            .await;
        if let Err(e) = constructed {
            let (kind, message) = match &e {
                CallError::Panicked(m) => ("constructor_panicked", format!("constructor {m}")),
                other => ("constructor_failed", format!("constructor failed: {other}")),
            };
            self.fail(&name, message.clone());
            self.board.update_plugin(&file_name(&library.file), |p| {
                p.error = Some(format!(
                    "{}: container `{name}`: {message}",
                    library.file.display()
                ));
                p.error_kind = Some(kind.to_owned());
            });
            drop(library);
            self.teardown(index, instance, false).await;
            return;
        }
        if let Err(e) = instance.worker.start(start_timeout).await {
            let message = if e.is_stuck() {
                format!("stuck in start: {e}")
            } else {
                format!("start failed: {e}")
            };
            self.fail(&name, message);
            drop(library);
            self.teardown(index, instance, true).await;
            return;
        }
        instance.health_task =
            Some(self.spawn_health_checks(&name, library.generation, instance.worker.clone()));
        self.containers[index].instance = Some(instance);
        self.set_state(&name, State::Running, None);
        info!(container = %name, generation = library.generation, "container running");
    }

    fn spawn_health_checks(
        &self,
        name: &str,
        generation: u64,
        worker: Arc<Worker>,
    ) -> JoinHandle<()> {
        let commands = self.commands.clone();
        let name = name.to_owned();
        let period = self.host.health_interval_ms.duration();
        let timeout = self.host.health_timeout_ms.duration();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let result = worker.health(timeout).await;
                let stop = result
                    .as_ref()
                    .is_err_and(|e| !matches!(e, CallError::Failed(_)));
                let sent = commands
                    .send(Command::Health {
                        name: name.clone(),
                        generation,
                        result,
                    })
                    .await;
                if sent.is_err() || stop {
                    return;
                }
            }
        })
    }

    async fn on_health(
        &mut self,
        name: &str,
        generation: u64,
        result: Result<HealthReport, CallError>,
    ) {
        let Some(index) = self.index_of(name) else {
            return;
        };
        let current = self.containers[index]
            .instance
            .as_ref()
            .map(|i| i.worker.library().generation);
        if current != Some(generation) {
            return; // A result from an instance that is gone.
        }
        let now = rfc3339(SystemTime::now());
        match result {
            Ok(report) => {
                if !report.healthy {
                    warn!(container = %name, reason = %report.message, "health check failed");
                }
                self.board.update_container(name, |status| {
                    status.health = Some(HealthStatus {
                        healthy: report.healthy,
                        message: report.message,
                        checked_at: now,
                        duration_ms: report.duration.as_secs_f64() * 1000.0,
                    });
                });
            }
            Err(CallError::Failed(message)) => {
                self.board.update_container(name, |status| {
                    status.health = Some(HealthStatus {
                        healthy: false,
                        message,
                        checked_at: now,
                        duration_ms: 0.0,
                    });
                });
            }
            Err(e) => {
                let message = if e.is_stuck() {
                    format!("stuck in health check: {e}")
                } else {
                    format!("health check {e}")
                };
                self.fail(name, message);
                if let Some(instance) = self.containers[index].instance.take() {
                    self.teardown(index, instance, true).await;
                }
            }
        }
    }

    /// Stops container `index` if it is live: stop, drop, join, unload if last.
    async fn stop_container(&mut self, index: usize, timeout: Duration) -> Result<(), String> {
        let Some(instance) = self.containers[index].instance.take() else {
            return Ok(());
        };
        let name = self.containers[index].name.clone();
        self.set_state(&name, State::Stopping, None);
        info!(container = %name, "container stopping");
        match self.teardown_with(index, instance, true, timeout).await {
            Ok(()) => {
                self.set_state(&name, State::Stopped, None);
                info!(container = %name, "container stopped");
                Ok(())
            }
            Err(message) => {
                self.fail(&name, message.clone());
                Err(message)
            }
        }
    }

    async fn teardown(&mut self, index: usize, instance: Instance, call_stop: bool) {
        let timeout = self.containers[index].stop_timeout;
        if let Err(message) = self
            .teardown_with(index, instance, call_stop, timeout)
            .await
        {
            let name = self.containers[index].name.clone();
            warn!(container = %name, error = %message, "cleaning up after a failure");
        }
    }

    /// Ends an instance: stop (optionally), drop the plugin value, join its thread, and
    /// unload its library if nothing else uses it. Returns the first problem.
    async fn teardown_with(
        &mut self,
        index: usize,
        mut instance: Instance,
        call_stop: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(task) = instance.health_task.take() {
            task.abort();
            let _ = task.await;
        }
        instance.services.request_stop();
        let deadline = Instant::now() + timeout;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let mut problem = None;
        if call_stop {
            if let Err(e) = instance.worker.stop(left()).await {
                problem = Some(if e.is_stuck() {
                    format!("stuck in stop: {e}")
                } else {
                    format!("stop failed: {e}")
                });
            }
        }
        if let Err(e) = instance.worker.dispose(left()).await {
            if !matches!(e, CallError::Stuck) || problem.is_none() {
                problem.get_or_insert(format!("drop {e}"));
            }
        }
        let library = instance.worker.library().clone();
        let finished = match Arc::try_unwrap(instance.worker) {
            Ok(worker) => worker.finish(left()).await.map_err(|e| e.to_string()),
            Err(_) => Err("its thread is still referenced".to_owned()),
        };
        if let Err(e) = finished {
            let reason = format!(
                "container `{}`: its thread did not end ({e}); the library stays loaded",
                self.containers[index].name
            );
            warn!(file = %library.file.display(), generation = library.generation, reason, "library cannot be unloaded");
            self.board.write().not_unloaded.push(NotUnloaded {
                file: file_name(&library.file),
                plugin: library.info.name.clone(),
                generation: library.generation,
                copy: library.copy.display().to_string(),
                reason,
            });
            problem.get_or_insert(format!("its thread did not end: {e}"));
        }
        self.release_library_if_unused(&library.file.clone(), Some(library));
        problem.map_or(Ok(()), Err)
    }

    /// Unloads the file's library when only the supervisor holds it.
    fn release_library_if_unused(&mut self, path: &Path, held: Option<Arc<Library>>) {
        drop(held);
        let Some(entry) = self.files.get_mut(path) else {
            return;
        };
        let Some(library) = entry.library.take() else {
            return;
        };
        if Arc::strong_count(&library) > 1 {
            entry.library = Some(library);
            return;
        }
        let file = file_name(path);
        let (generation, copy, plugin) = (
            library.generation,
            library.copy.clone(),
            library.info.name.clone(),
        );
        match library.unload() {
            Ok(report) => {
                for problem in &report.errors {
                    warn!(file, generation, problem = %problem, "while unloading");
                }
                if report.still_mapped {
                    let reason = "still mapped after dlclose (a plugin thread or thread-local keeps it alive)";
                    warn!(file, generation, copy = %copy.display(), mapped = true, reason, "library still mapped");
                    self.board.write().not_unloaded.push(NotUnloaded {
                        file: file.clone(),
                        plugin,
                        generation,
                        copy: copy.display().to_string(),
                        reason: reason.into(),
                    });
                } else {
                    info!(file, generation, copy = %copy.display(), mapped = false, "library unloaded");
                }
                self.board.update_plugin(&file, |p| {
                    if p.status == FileState::Loaded {
                        p.status = if p.error_kind.is_some() {
                            FileState::Error
                        } else {
                            FileState::Unloaded
                        };
                    }
                });
            }
            Err(library) => entry.library = Some(library),
        }
    }

    /// Stops every live container in reverse registration order within the shutdown
    /// budget, then unloads every library.
    async fn shutdown(&mut self) -> ShutdownReport {
        let budget = self.host.shutdown_timeout_ms.duration();
        let deadline = Instant::now() + budget;
        info!(budget_ms = budget.as_millis() as u64, "shutting down");
        let mut report = ShutdownReport::default();
        for index in (0..self.containers.len()).rev() {
            if self.containers[index].instance.is_none() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = self.containers[index]
                .stop_timeout
                .min(left)
                .max(Duration::from_millis(1));
            if let Err(reason) = self.stop_container(index, timeout).await {
                report
                    .failures
                    .push((self.containers[index].name.clone(), reason));
            }
        }
        for path in self.files.keys().cloned().collect::<Vec<_>>() {
            self.release_library_if_unused(&path, None);
        }
        report.not_unloaded = self.board.read().not_unloaded.clone();
        for (name, reason) in &report.failures {
            warn!(container = %name, reason = %reason, "did not stop cleanly");
        }
        report
    }
}

fn loaded_status(file: &str, library: &Library) -> PluginStatus {
    PluginStatus {
        file: file.to_owned(),
        status: FileState::Loaded,
        error: None,
        error_kind: None,
        name: Some(library.info.name.clone()),
        version: Some(library.info.version.clone()),
        interface_version: Some(library.info.interface.to_string()),
        generation: Some(library.generation),
        sha256: Some(library.short_hash().to_owned()),
        loaded_at: Some(rfc3339(library.loaded_at)),
    }
}

fn error_status(file: &str, kind: &str, message: String) -> PluginStatus {
    PluginStatus {
        file: file.to_owned(),
        status: FileState::Error,
        error: Some(message),
        error_kind: Some(kind.to_owned()),
        name: None,
        version: None,
        interface_version: None,
        generation: None,
        sha256: None,
        loaded_at: None,
    }
}

/// The plugin files in `dir`: regular files (or links to them) named `*.so`, sorted.
pub fn scan_plugin_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_plugin_name = path.extension().is_some_and(|e| e == "so")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_plugin_name {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}
