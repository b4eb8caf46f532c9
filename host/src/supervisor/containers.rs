//! Containers: registering, starting (in parallel), stopping, unloading, shutdown.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{Command, Container, Hold, Instance, ShutdownReport, Supervisor, file_name};
use crate::config::ContainerConfig;
use crate::events::EventKind;
use crate::loader::{CallError, Library, Worker};
use crate::probes::{self, ProbeSpec};
use crate::restart::Restarts;
use crate::services::HostServices;
use crate::status::{
    ContainerStatus, FileState, HISTORY, NotUnloaded, PluginStatus, State, Transition, rfc3339,
};

impl Supervisor {
    /// Makes sure the containers of `plugin` are registered: the config's instances of it
    /// (in file order), or else one instance named after the plugin. Returns their indices
    /// in registration order.
    pub(super) fn ensure_registered(&mut self, plugin: &str) -> Vec<usize> {
        let configured: Vec<(String, ContainerConfig)> = self
            .settings
            .config
            .containers
            .iter()
            .filter(|(_, c)| c.plugin == plugin)
            .map(|(name, c)| (name.as_str().to_owned(), c.clone()))
            .collect();
        if configured.is_empty() {
            let taken = self
                .settings
                .config
                .containers
                .keys()
                .any(|n| n.as_str() == plugin);
            if taken {
                warn!(
                    plugin,
                    "no default instance: a configured container of another plugin has its name"
                );
            } else if self.index_of(plugin).is_none() {
                self.register(plugin, plugin, None);
            }
        }
        for (name, config) in &configured {
            if self.index_of(name).is_none() {
                self.register(name, plugin, Some(config));
            }
        }
        (0..self.containers.len())
            .filter(|&i| self.containers[i].plugin == plugin)
            .collect()
    }

    /// Registers every configured container not registered yet (their plugin is not in
    /// the folder): they are listed as failed until it appears.
    pub(super) fn register_missing(&mut self) {
        let missing: Vec<(String, ContainerConfig)> = self
            .settings
            .config
            .containers
            .iter()
            .filter(|(name, _)| self.index_of(name.as_str()).is_none())
            .map(|(name, c)| (name.as_str().to_owned(), c.clone()))
            .collect();
        for (name, config) in missing {
            self.register(&name, &config.plugin, Some(&config));
            let message = format!(
                "no plugin named `{}` in {}",
                config.plugin,
                self.settings.plugin_dir.display()
            );
            self.fail(&name, message);
        }
    }

    fn register(&mut self, name: &str, plugin: &str, config: Option<&ContainerConfig>) {
        let default = ContainerConfig {
            plugin: plugin.to_owned(),
            config: toml::Table::new(),
            start_timeout_ms: None,
            stop_timeout_ms: None,
            requires: None,
            restart: Default::default(),
            backoff: Default::default(),
            liveness: Default::default(),
            readiness: Default::default(),
        };
        let spec = config.unwrap_or(&default);
        let liveness_default = ProbeSpec {
            period: self.host.health_interval_ms.duration(),
            timeout: self.host.health_timeout_ms.duration(),
            ..ProbeSpec::LIVENESS
        };
        // The config's list, else the plugin's default (interface 1.1).
        let requires: Vec<String> = match &spec.requires {
            Some(names) => names.iter().map(|n| n.as_str().to_owned()).collect(),
            None => self
                .providers
                .get(plugin)
                .and_then(|path| self.files.get(path))
                .and_then(|file| file.library.as_ref())
                .map(|library| library.default_requires.clone())
                .unwrap_or_default(),
        };
        let host = &self.host;
        self.containers.push(Container {
            name: name.to_owned(),
            plugin: plugin.to_owned(),
            configured: config.is_some(),
            wanted: true,
            config_json: config.map_or_else(|| "{}".to_owned(), ContainerConfig::config_json),
            start_timeout: config
                .and_then(|c| c.start_timeout_ms)
                .unwrap_or(host.start_timeout_ms)
                .duration(),
            stop_timeout: config
                .and_then(|c| c.stop_timeout_ms)
                .unwrap_or(host.stop_timeout_ms)
                .duration(),
            requires: requires.clone(),
            policy: spec.restart,
            backoff: spec.backoff.resolve(),
            liveness: ProbeSpec::from_config(&spec.liveness, liveness_default),
            readiness: ProbeSpec::from_config(&spec.readiness, ProbeSpec::READINESS),
            restarts: Restarts::default(),
            hold: Hold::Free,
            ready: false,
            instance: None,
        });
        self.board
            .write()
            .containers
            .push(ContainerStatus::registered(name, plugin, requires));
        self.board.metrics.container_registered(name);
        info!(container = %name, generation = %self.generation_of(name), plugin = %plugin, "container registered");
    }

    /// Forgets container `index` (it must not be live).
    pub(super) fn deregister(&mut self, index: usize) {
        let container = self.containers.remove(index);
        self.board
            .write()
            .containers
            .retain(|c| c.name != container.name);
        info!(container = %container.name, "container deregistered");
    }

    /// Records a state change; `reason` replaces `last_error` when given, and `running`
    /// clears it. Entering `starting` resets readiness and health (on every restart).
    pub(super) fn set_state(&self, name: &str, state: State, reason: Option<String>) {
        let mut transition = None;
        self.board.update_container(name, |status| {
            let now = rfc3339(SystemTime::now());
            if status.state != state {
                status.since = now.clone();
                transition = Some(Transition {
                    at: now,
                    from: status.state,
                    to: state,
                    reason: reason.clone(),
                });
            }
            status.state = state;
            // The last error stays visible through backoff and restarts until it runs again.
            if reason.is_some() || state == State::Running {
                status.last_error = reason;
            }
            if state != State::Running {
                status.ready = false;
            }
            if state == State::Starting {
                status.health = None;
                status.next_retry = None;
            }
            if let Some(t) = &transition {
                status.history.push(t.clone());
                let excess = status.history.len().saturating_sub(HISTORY);
                status.history.drain(..excess);
            }
        });
        if let Some(t) = transition {
            self.board.events.publish(EventKind::State {
                container: name.to_owned(),
                from: t.from,
                to: t.to,
                reason: t.reason,
            });
        }
    }

    /// The generation of the library a container's instance comes (or last came) from, for
    /// log lines: every line about a container carries its name and generation.
    pub(super) fn generation_of(&self, name: &str) -> String {
        self.board
            .container(name)
            .and_then(|c| c.generation)
            .map_or_else(|| "-".to_owned(), |g| g.to_string())
    }

    pub(super) fn fail(&self, name: &str, error: String) {
        error!(container = %name, generation = %self.generation_of(name), error = %error, "container failed");
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
        self.load_again(&path).await
    }

    /// Constructs and starts container `index` now (an explicit start: backoff and a
    /// failed hold are cleared), unless it is live. Returns whether it is running.
    pub(super) async fn start_container(&mut self, index: usize) -> bool {
        self.containers[index].hold = Hold::Free;
        let name = self.containers[index].name.clone();
        self.start_many(vec![index]).await;
        self.index_of(&name)
            .is_some_and(|i| self.containers[i].instance.is_some())
    }

    /// Starts the given containers in parallel: each is constructed and started on its own
    /// worker thread; the results are collected as they come. Containers whose requirements
    /// are not ready are left waiting.
    pub(super) async fn start_many(&mut self, indices: Vec<usize>) {
        let mut jobs = tokio::task::JoinSet::new();
        let mut prepared: HashMap<String, (Arc<Library>, Instance)> = HashMap::new();
        for index in indices {
            let container = &self.containers[index];
            if container.instance.is_some() || prepared.contains_key(&container.name) {
                continue;
            }
            if let Some(reason) = self.unready_requirements(index) {
                self.set_waiting(index, reason);
                continue;
            }
            let name = container.name.clone();
            let plugin = container.plugin.clone();
            let (config_json, timeout) = (container.config_json.clone(), container.start_timeout);
            self.set_state(&name, State::Starting, None);
            info!(container = %name, generation = %self.generation_of(&name), "container starting");
            let library = match self.library_for(&plugin).await {
                Ok(library) => library,
                Err(message) => {
                    self.fail(&name, message);
                    self.after_failure(&name).await;
                    continue;
                }
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
                Err(e) => {
                    self.fail(&name, format!("cannot spawn its thread: {e}"));
                    self.after_failure(&name).await;
                    continue;
                }
            };
            self.next_instance += 1;
            let instance = Instance {
                id: self.next_instance,
                worker: worker.clone(),
                services: HostServices::new(
                    &name,
                    library.generation,
                    self.next_instance,
                    self.notice_sender.clone(),
                ),
                probe_task: None,
            };
            let host = instance.services.to_ffi();
            let job_name = name.clone();
            jobs.spawn(async move {
                let outcome = match worker
                    .construct(&job_name, config_json, host, timeout)
                    .await
                {
                    Err(e) => Err((false, e)),
                    Ok(()) => worker.start(timeout).await.map_err(|e| (true, e)),
                };
                drop(worker);
                (job_name, outcome)
            });
            prepared.insert(name, (library, instance));
        }
        while let Some(joined) = jobs.join_next().await {
            let Ok((name, outcome)) = joined else {
                continue; // A start job cannot panic; nothing to finish if it did.
            };
            let Some((library, instance)) = prepared.remove(&name) else {
                continue;
            };
            self.finish_start(&name, library, instance, outcome).await;
        }
    }

    async fn finish_start(
        &mut self,
        name: &str,
        library: Arc<Library>,
        mut instance: Instance,
        outcome: Result<(), (bool, CallError)>,
    ) {
        let Some(index) = self.index_of(name) else {
            return;
        };
        match outcome {
            Ok(()) => {
                instance.probe_task = Some(self.spawn_probes(index, &instance));
                let generation = library.generation;
                // Ready now, unless it said in its constructor or start that it will tell.
                let ready = instance.services.reported_readiness() != Some(false);
                let container = &mut self.containers[index];
                container.instance = Some(instance);
                container.ready = ready;
                if ready {
                    container.restarts.on_ready(tokio::time::Instant::now());
                }
                self.set_state(name, State::Running, None);
                self.board
                    .update_container(name, |status| status.ready = ready);
                info!(container = %name, generation, ready, "container running");
            }
            Err((false, e)) => {
                let (kind, message) = match &e {
                    CallError::Panicked(m) => ("constructor_panicked", format!("constructor {m}")),
                    other => ("constructor_failed", format!("constructor failed: {other}")),
                };
                self.fail(name, message.clone());
                self.board.update_plugin(&file_name(&library.file), |p| {
                    p.error = Some(format!(
                        "{}: container `{name}`: {message}",
                        library.file.display()
                    ));
                    p.error_kind = Some(kind.to_owned());
                });
                drop(library);
                self.teardown(index, instance, false).await;
                self.after_failure(name).await;
            }
            Err((true, e)) => {
                let message = if e.is_stuck() {
                    format!("stuck in start: {e}")
                } else {
                    format!("start failed: {e}")
                };
                self.fail(name, message);
                drop(library);
                self.teardown(index, instance, true).await;
                self.after_failure(name).await;
            }
        }
    }

    fn spawn_probes(&self, index: usize, instance: &Instance) -> JoinHandle<()> {
        let container = &self.containers[index];
        let commands = self.commands.clone();
        let name = container.name.clone();
        let id = instance.id;
        let report = move |report| {
            commands
                .try_send(Command::Probe {
                    name: name.clone(),
                    instance: id,
                    report,
                })
                .is_ok()
                || !commands.is_closed()
        };
        tokio::spawn(probes::run_on(
            instance.worker.clone(),
            container.liveness,
            container.readiness,
            report,
        ))
    }

    /// Stops container `index` if it is live: stop, drop, join, unload if last.
    pub(super) async fn stop_container(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(instance) = self.containers[index].instance.take() else {
            return Ok(());
        };
        let name = self.containers[index].name.clone();
        self.set_state(&name, State::Stopping, None);
        info!(container = %name, generation = %self.generation_of(&name), "container stopping");
        match self.teardown_with(index, instance, true, timeout).await {
            Ok(()) => {
                self.set_state(&name, State::Stopped, None);
                info!(container = %name, generation = %self.generation_of(&name), "container stopped");
                Ok(())
            }
            Err(message) => {
                self.fail(&name, message.clone());
                Err(message)
            }
        }
    }

    pub(super) async fn teardown(&mut self, index: usize, instance: Instance, call_stop: bool) {
        let timeout = self.containers[index].stop_timeout;
        if let Err(message) = self
            .teardown_with(index, instance, call_stop, timeout)
            .await
        {
            let name = self.containers[index].name.clone();
            warn!(container = %name, generation = %self.generation_of(&name), error = %message, "cleaning up after a failure");
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
        if let Some(task) = instance.probe_task.take() {
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

    /// Unloads the file's library when only the supervisor holds it (no container of it
    /// is live), marking the file `unloaded`.
    pub(super) fn release_library_if_unused(&mut self, path: &Path, held: Option<Arc<Library>>) {
        drop(held);
        let Some(entry) = self.files.get_mut(path) else {
            return;
        };
        let unused = entry
            .library
            .as_ref()
            .is_some_and(|l| Arc::strong_count(l) == 1);
        if !unused {
            return;
        }
        if let Some(library) = entry.library.take() {
            self.unload_generation(library);
            self.board.update_plugin(&file_name(path), |p| {
                if p.status == FileState::Loaded {
                    p.status = if p.error_kind.is_some() {
                        FileState::Error
                    } else {
                        FileState::Unloaded
                    };
                }
            });
        }
    }

    /// Unloads a generation nothing else should hold, reporting a library that stays
    /// mapped. A generation still held (by a stuck thread) is left mapped for good.
    pub(super) fn unload_generation(&mut self, library: Arc<Library>) {
        let file = file_name(&library.file);
        let (generation, copy, plugin) = (
            library.generation,
            library.copy.clone(),
            library.info.name.clone(),
        );
        let began = std::time::Instant::now();
        let report = match library.unload() {
            Ok(report) => report,
            Err(held) => {
                warn!(
                    file,
                    generation, "library still in use by a stuck thread; it stays loaded"
                );
                drop(held);
                return;
            }
        };
        for problem in &report.errors {
            warn!(file, generation, problem = %problem, "while unloading");
        }
        self.board.events.publish(EventKind::Unloaded {
            file: file.clone(),
            generation,
            mapped: report.still_mapped,
        });
        self.board.metrics.unloaded(began.elapsed());
        if report.still_mapped {
            let reason =
                "still mapped after dlclose (a plugin thread or thread-local keeps it alive)";
            warn!(file, generation, copy = %copy.display(), mapped = true, reason, "library still mapped");
            self.board.write().not_unloaded.push(NotUnloaded {
                file,
                plugin,
                generation,
                copy: copy.display().to_string(),
                reason: reason.into(),
            });
        } else {
            info!(file, generation, copy = %copy.display(), mapped = false, "library unloaded");
        }
    }

    /// Stops every live container in reverse registration order within the shutdown
    /// budget, then unloads every library.
    pub(super) async fn shutdown(&mut self) -> ShutdownReport {
        self.watcher = None;
        self.shutting_down = true;
        let budget = self.host.shutdown_timeout_ms.duration();
        let deadline = Instant::now() + budget;
        info!(budget_ms = budget.as_millis() as u64, "shutting down");
        let mut report = ShutdownReport::default();
        let all = (0..self.containers.len()).collect();
        for index in self.stop_order(all) {
            if self.containers[index].instance.is_none() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Not called at all: a stop with no time left would fail and blame a
                // container that did nothing wrong. Its thread and library are abandoned
                // to the exiting process.
                let reason = format!(
                    "not stopped: the shutdown budget ({} ms, host.shutdown_timeout_ms) was used up before its turn",
                    budget.as_millis()
                );
                if let Some(mut instance) = self.containers[index].instance.take() {
                    if let Some(task) = instance.probe_task.take() {
                        task.abort();
                    }
                    instance.services.request_stop();
                }
                let name = self.containers[index].name.clone();
                self.fail(&name, reason.clone());
                report.failures.push((name, reason));
                continue;
            }
            let timeout = self.containers[index].stop_timeout.min(left);
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
            warn!(container = %name, generation = %self.generation_of(name), reason = %reason, "did not stop cleanly");
        }
        report
    }
}

pub(super) fn loaded_status(file: &str, library: &Library) -> PluginStatus {
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

pub(super) fn error_status(file: &str, kind: &str, message: String) -> PluginStatus {
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
