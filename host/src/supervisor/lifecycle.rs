//! The calls that start and stop one instance: construct and start on its worker (several
//! containers in parallel), then its probes; stop, drop, join. A generation an instance
//! cannot let go of (a stuck thread) is pinned in `not_unloaded`; everything else is
//! unloaded by the sweep once no instance holds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::handle::ProbeMessage;
use super::policy::Exit;
use super::set::{Hold, Instance};
use super::teardown::{Ended, end_instance};
use super::{Supervisor, stopped};
use crate::loader::{CallError, ConfigCheck};
use crate::model::{FileState, State};
use crate::platform::{Calls, Generation, Platform};
use crate::probes;

/// Why a start did not succeed.
enum StartError {
    Construct(CallError),
    Start(CallError),
}

impl<P: Platform> Supervisor<P> {
    /// Starts `name` now, unless it is live: an explicit start, so a hold is cleared.
    /// Returns whether it runs.
    pub(super) async fn start_now(&mut self, name: &str) -> bool {
        if let Some(container) = self.containers.get_mut(name) {
            container.hold = Hold::Free;
        }
        self.start_many(vec![name.to_owned()]).await;
        self.containers.get(name).is_some_and(|c| c.is_live())
    }

    /// Starts the named containers in parallel: each is constructed and started on its own
    /// worker thread; results are handled as they come. Those whose requirements are not
    /// ready are left waiting.
    pub(super) async fn start_many(&mut self, names: Vec<String>) {
        if self.shared.stop_requested_at().is_some() {
            return; // The host is shutting down: nothing new starts.
        }
        let mut jobs = JoinSet::new();
        let mut prepared: HashMap<String, Instance<P::Worker>> = HashMap::new();
        for name in names {
            let Some(container) = self.containers.get(&name) else {
                continue;
            };
            if container.is_live() || prepared.contains_key(&name) {
                continue;
            }
            if let Some(reason) = self.containers.unready_requirements(&name) {
                self.set_waiting(&name, reason);
                continue;
            }
            #[cfg(test)]
            self.record_start(&name);
            let Some(container) = self.containers.get(&name) else {
                continue;
            };
            let plugin = container.plugin.clone();
            let config_json = container.spec.config_json.clone();
            let timeout = container.spec.start_timeout;
            self.containers.set_state(&name, State::Starting, None);
            let library = match self.library_for(&plugin).await {
                Ok(library) => library,
                Err(message) => {
                    self.fail(&name, message);
                    self.after_failure(&name, Exit::Failed).await;
                    continue;
                }
            };
            info!(container = %name, generation = library.generation(), "container starting");
            let instance = match self.prepare_instance(&name, &library, None) {
                Ok(instance) => instance,
                Err(message) => {
                    self.show_generation(&name, &*library, None);
                    self.fail(&name, message);
                    self.after_failure(&name, Exit::Failed).await;
                    continue;
                }
            };
            self.show_generation(&name, &*library, instance.worker.pid());
            let (worker, services) = (instance.worker.clone(), instance.services.clone());
            let job_name = name.clone();
            jobs.spawn(async move {
                let outcome = match worker
                    .construct(&job_name, config_json, &services, timeout)
                    .await
                {
                    Err(e) => Err(StartError::Construct(e)),
                    Ok(()) => worker.start(timeout).await.map_err(StartError::Start),
                };
                drop(worker);
                (job_name, outcome)
            });
            prepared.insert(name, instance);
        }
        let mut stop = self.shared.stop_requests();
        loop {
            let joined = tokio::select! {
                biased;
                // A shutdown does not wait for starts in flight: it gives them up.
                () = stopped(&mut stop) => {
                    drop(jobs);
                    self.give_up_starts(prepared);
                    return;
                }
                joined = jobs.join_next() => joined,
            };
            let Some(joined) = joined else {
                return;
            };
            let Ok((name, outcome)) = joined else {
                continue; // A start job cannot panic; nothing to finish if it did.
            };
            if let Some(instance) = prepared.remove(&name) {
                self.finish_start(&name, instance, outcome).await;
            }
        }
    }

    /// The host is shutting down while these were starting: they are told to stop, left
    /// to their threads, and shown as not started.
    fn give_up_starts(&mut self, prepared: HashMap<String, Instance<P::Worker>>) {
        for (name, instance) in prepared {
            instance.services.request_stop();
            if let Some(container) = self.containers.get_mut(&name) {
                container.hold = Hold::Parked;
            }
            let generation = instance.generation;
            warn!(container = %name, generation, "its start was in flight when the host began to shut down; given up");
            let reason = "not started: its start was in flight when the host began to shut down, \
                          and was given up (its thread is left to end with the process)";
            self.containers
                .set_state(&name, State::Failed, Some(reason.to_owned()));
            self.given_up.push(super::handle::StopFailure {
                container: name,
                reason: reason.to_owned(),
            });
        }
    }

    async fn finish_start(
        &mut self,
        name: &str,
        mut instance: Instance<P::Worker>,
        outcome: Result<(), StartError>,
    ) {
        match outcome {
            Ok(()) => {
                instance.probe_task = Some(self.spawn_probes(name, &instance));
                let generation = instance.generation;
                // Ready now, unless it said in its constructor or start that it will tell.
                let ready = instance.services.reported_readiness() != Some(false);
                let Some(container) = self.containers.get_mut(name) else {
                    return;
                };
                container.instance = Some(instance);
                self.containers.set_state(name, State::Running, None);
                if let Some(container) = self.containers.get_mut(name) {
                    container.ready = ready;
                    if ready {
                        container.restarts.on_ready(Instant::now());
                    }
                }
                self.containers.show(name, |status| status.ready = ready);
                info!(container = %name, generation, ready, "container running");
            }
            Err(StartError::Construct(CallError::BadConfig(message))) => {
                let message = self.config_error(name, &instance, message).await;
                self.fail(name, message);
                let _ = self.teardown(name, instance, false).await;
                if let Some(container) = self.containers.get_mut(name) {
                    container.hold = Hold::BadConfig;
                }
                self.stop_dependents(name, "failed").await;
                warn!(container = %name, "not retried until its config, its plugin file or a manual request changes something");
            }
            Err(StartError::Construct(e)) => {
                let (kind, message) = match &e {
                    CallError::Panicked(m) => ("constructor_panicked", format!("constructor {m}")),
                    other => ("constructor_failed", format!("constructor failed: {other}")),
                };
                self.fail(name, message.clone());
                let file = instance.worker.library().file().to_owned();
                // Shown as `error` at once, as the sweep and a reload would show it: a
                // reader never sees `loaded` with a constructor's error.
                self.files.show(&file, |p| {
                    p.error = Some(format!("{}: container `{name}`: {message}", file.display()));
                    p.error_kind = Some(kind.to_owned());
                    if p.status == FileState::Loaded {
                        p.status = FileState::Error;
                    }
                });
                let _ = self.teardown(name, instance, false).await;
                self.after_failure(name, Exit::Failed).await;
            }
            Err(StartError::Start(e)) => {
                let message = if e.is_stuck() {
                    format!("stuck in start: {e}")
                } else {
                    format!("start failed: {e}")
                };
                self.fail(name, message);
                let _ = self.teardown(name, instance, true).await;
                self.after_failure(name, Exit::Failed).await;
            }
        }
    }

    /// The message for a config the plugin's constructor refused: the plugin's config
    /// check (interface 1.2) names the key path; older plugins only give a message.
    async fn config_error(
        &self,
        name: &str,
        instance: &Instance<P::Worker>,
        message: String,
    ) -> String {
        let Some(container) = self.containers.get(name) else {
            return message;
        };
        let (json, timeout) = (&container.spec.config_json, container.spec.start_timeout);
        let library = instance.worker.library();
        match self.platform.check_config(library, json, timeout).await {
            Ok(ConfigCheck::Refused { path, message }) => config_key_error(name, &path, &message),
            _ => format!("containers.{name}.config: {message}"),
        }
    }

    pub(super) fn spawn_probes(
        &self,
        name: &str,
        instance: &Instance<P::Worker>,
    ) -> tokio::task::JoinHandle<()> {
        let spec = self
            .containers
            .get(name)
            .map(|c| (c.spec.liveness, c.spec.readiness));
        let (liveness, readiness) = spec.unwrap_or((None, None));
        let probes = self.inbox.probe_sender.clone();
        let (name, id) = (name.to_owned(), instance.id);
        // The send waits while the supervisor is busy: a verdict is never dropped.
        let report = move |report| {
            let probes = probes.clone();
            let message = ProbeMessage {
                name: name.clone(),
                instance: id,
                report,
            };
            async move { probes.send(message).await.is_ok() }
        };
        tokio::spawn(probes::run_on(
            instance.worker.clone(),
            liveness,
            readiness,
            report,
        ))
    }

    /// The generation for `plugin`: the one in memory, else a load of the content in
    /// service (kept after a rollback) or of the file in the folder.
    pub(super) async fn library_for(&mut self, plugin: &str) -> Result<Arc<P::Library>, String> {
        if let Some(library) = self.files.current_of(plugin) {
            return Ok(library.clone());
        }
        let Some(path) = self.files.provider(plugin).map(|p| p.to_owned()) else {
            return Err(format!(
                "no plugin named `{plugin}` in {}",
                self.settings.plugin_dir.display()
            ));
        };
        let content = match self.files.record(&path).and_then(|r| r.fallback.clone()) {
            Some(content) => content,
            None => match self.platform.look(&path, &self.look_rules()) {
                crate::platform::Observation::Content(content) => content,
                crate::platform::Observation::Unusable { message, .. } => return Err(message),
                _ => {
                    return Err(format!(
                        "{}: changed or gone; looking again",
                        path.display()
                    ));
                }
            },
        };
        let library = self
            .load_timed(&path, &content)
            .await
            .map_err(|e| e.to_string())?;
        if library.info().name != plugin {
            let other = library.info().name.clone();
            self.files.discard(&mut self.platform, library);
            self.pending.touch(path.clone(), Instant::now());
            return Err(format!(
                "{}: now declares plugin `{other}`, not `{plugin}`; looking at it again",
                path.display()
            ));
        }
        let in_service = self.files.record(&path).and_then(|r| r.admitted.clone());
        if in_service.as_deref() == Some(content.hash.as_str()) {
            self.files.serve_again(&path, library.clone());
            self.log_loaded(&*library);
            return Ok(library);
        }
        // New content nobody has looked at yet (the file changed since): adopt it.
        match self.files.install(&path, library.clone(), &content) {
            Ok(()) => {
                self.log_loaded(&*library);
                Ok(library)
            }
            Err(duplicate) => {
                self.files.discard(&mut self.platform, library);
                Err(format!(
                    "{}: plugin `{plugin}` is already provided by {}",
                    path.display(),
                    duplicate.other.display()
                ))
            }
        }
    }

    /// Stops `name` if it is live, within its stop timeout.
    pub(super) async fn stop_container(&mut self, name: &str) -> Result<(), String> {
        let timeout = self.containers.get(name).map(|c| c.spec.stop_timeout);
        self.stop_within(name, timeout.unwrap_or(Duration::from_secs(10)))
            .await
    }

    /// Stops `name` if it is live: stop, drop, join. A failure leaves it `failed`.
    pub(super) async fn stop_within(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(instance) = self
            .containers
            .get_mut(name)
            .and_then(|c| c.instance.take())
        else {
            return Ok(());
        };
        let generation = instance.generation;
        self.containers.set_state(name, State::Stopping, None);
        info!(container = %name, generation, "container stopping");
        match self.teardown_within(name, instance, true, timeout).await {
            Ok(()) => {
                self.containers.set_state(name, State::Stopped, None);
                info!(container = %name, generation, "container stopped");
                Ok(())
            }
            Err(message) => {
                self.fail(name, message.clone());
                Err(message)
            }
        }
    }

    /// Ends an instance after a failure, within its stop timeout.
    pub(super) async fn teardown(
        &mut self,
        name: &str,
        instance: Instance<P::Worker>,
        call_stop: bool,
    ) -> Result<(), String> {
        let generation = instance.generation;
        let timeout = self.containers.get(name).map(|c| c.spec.stop_timeout);
        let result = self
            .teardown_within(
                name,
                instance,
                call_stop,
                timeout.unwrap_or(Duration::from_secs(10)),
            )
            .await;
        if let Err(message) = &result {
            warn!(container = %name, generation, error = %message, "cleaning up after a failure");
        }
        result
    }

    /// Ends an instance: stop (optionally), drop the plugin value, join its thread. A
    /// thread that does not end pins its generation. Returns the first problem.
    pub(super) async fn teardown_within(
        &mut self,
        name: &str,
        instance: Instance<P::Worker>,
        call_stop: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        // A stop-first hot reload: the stopped instance hands its state to the next one.
        let keep_state = self.keep_state.remove(name);
        let ended = end_instance(name, instance, call_stop, keep_state, timeout).await;
        self.record_end(name, ended)
    }

    /// Records how an instance ended: its handed-over state, a pinned generation, its
    /// process gone from the status. Returns the first problem.
    pub(super) fn record_end(
        &mut self,
        name: &str,
        ended: Ended<P::Library>,
    ) -> Result<(), String> {
        if let Some(state) = ended.state {
            self.handed_over.insert(name.to_owned(), state);
        }
        if let Some((library, reason)) = ended.pinned {
            self.files.pin(&*library, reason);
        }
        if let Some(pid) = ended.pid {
            self.containers.show(name, |status| {
                if status.process.is_some_and(|p| p.pid == pid) {
                    status.process = None;
                }
            });
        }
        ended.problem.map_or(Ok(()), Err)
    }

    pub(super) fn fail(&mut self, name: &str, error: String) {
        let generation = self
            .containers
            .get(name)
            .and_then(|c| c.status().generation);
        error!(container = %name, generation, error = %error, "container failed");
        self.containers.set_state(name, State::Failed, Some(error));
    }
}

/// `containers.NAME.config.PATH: MESSAGE`, the key path of a refused config.
pub(super) fn config_key_error(name: &str, path: &str, message: &str) -> String {
    if path.is_empty() || path == "." {
        format!("containers.{name}.config: {message}")
    } else {
        format!("containers.{name}.config.{path}: {message}")
    }
}
