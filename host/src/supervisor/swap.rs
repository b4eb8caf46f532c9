//! A file's plugin arriving, changing and going: add, hot swap with rollback, remove.
//!
//! A swap loads the new generation beside the old one, stops the old containers, starts
//! them on the new one, and if any fails, stops the new ones, puts the old generation back
//! in service and starts them on it again. The refused content is remembered: until the
//! file changes again, every later start (a restart, a liveness failure) uses the content
//! in service, never the refused file.

use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Phase;
use super::Supervisor;
use super::generations::Judged;
use super::set::Hold;
use crate::events::EventKind;
use crate::loader::LoadError;
use crate::model::{FileState, Isolation, State};
use crate::platform::{Content, Generation, Platform, Problem, file_name};

/// Load errors a file still being written shows.
fn looks_partial(error: &LoadError) -> bool {
    matches!(
        error,
        LoadError::NotElf { .. } | LoadError::Truncated { .. }
    )
}

impl<P: Platform> Supervisor<P> {
    /// Loads new content of `path`; `Err` carries when to look again, if the file may
    /// still be being written. A load error is reported.
    async fn load_new(
        &mut self,
        path: &Path,
        content: &Content,
    ) -> Result<Arc<P::Library>, Option<Instant>> {
        let previous = self.files.record(path).map(|r| r.status().status);
        self.files.set_file_state(path, FileState::Loading);
        match self.load_timed(path, content).await {
            Ok(library) => Ok(library),
            Err(e) => {
                if looks_partial(&e) {
                    let settle = self.host.settle_ms.duration();
                    let modified = content.stamp.modified;
                    let now = Instant::now();
                    if let Some(at) = self.pending.still_settling(path, modified, settle, now) {
                        if let Some(previous) = previous {
                            self.files.set_file_state(path, previous);
                        }
                        return Err(Some(at));
                    }
                }
                self.refuse_load(path, &e, &content.hash);
                Err(None)
            }
        }
    }

    /// Makes a loaded generation the file's, or refuses it as a duplicate. Returns the
    /// plugin's containers, registered.
    fn adopt(
        &mut self,
        path: &Path,
        library: Arc<P::Library>,
        content: &Content,
    ) -> Option<Vec<String>> {
        let plugin = library.info().name.clone();
        if let Err(duplicate) = self.files.install(path, library.clone(), content) {
            let message = format!(
                "{}: plugin `{plugin}` is already provided by {}",
                path.display(),
                duplicate.other.display()
            );
            let judged = Judged::Content(content.hash.clone());
            self.files
                .refuse(path, Problem::DuplicatePlugin, message, judged);
            let record = self.files.record_mut(path);
            record.duplicate_of = Some(plugin.clone());
            self.files.show(path, |p| p.name = Some(plugin));
            self.files.discard(&mut self.platform, library);
            return None;
        }
        self.log_loaded(&*library);
        let names = self.ensure_registered(&plugin);
        // A new version may accept a config the old one refused.
        for name in &names {
            if let Some(container) = self.containers.get_mut(name) {
                if container.hold == Hold::BadConfig {
                    container.hold = Hold::Free;
                }
            }
        }
        Some(names)
    }

    /// New content, no generation of the file in memory: load it, register and start.
    pub(super) async fn add(&mut self, path: &Path, content: Content) -> Option<Instant> {
        let library = match self.load_new(path, &content).await {
            Ok(library) => library,
            Err(again) => return again,
        };
        let before = self.files.record(path).and_then(|r| r.plugin.clone());
        if before.is_some_and(|p| p != library.info().name) {
            // The file now holds another plugin: the one it provided goes first.
            self.remove_plugin_of(path).await;
        }
        self.add_loaded(path, library, content).await
    }

    /// New content for a file whose generation is in memory.
    pub(super) async fn replace(&mut self, path: &Path, content: Content) -> Option<Instant> {
        let old = self.files.record(path).and_then(|r| r.current.clone())?;
        let new = match self.load_new(path, &content).await {
            Ok(new) => new,
            Err(again) => return again,
        };
        if new.info().name != old.info().name {
            // Another plugin now lives in this file: the old one goes, the new one comes.
            drop(old);
            self.remove_plugin_of(path).await;
            return self.add_loaded(path, new, content).await;
        }
        self.swap(path, old, new, content).await;
        None
    }

    /// Adopts a loaded generation as the file's and starts its containers (after the first
    /// scan; during it, everything starts together afterwards).
    async fn add_loaded(
        &mut self,
        path: &Path,
        library: Arc<P::Library>,
        content: Content,
    ) -> Option<Instant> {
        let names = self.adopt(path, library, &content)?;
        if self.phase != Phase::Running {
            return None;
        }
        let due = names
            .into_iter()
            .filter(|n| {
                self.containers
                    .get(n)
                    .is_some_and(|c| c.wanted && !c.is_live())
            })
            .collect();
        self.start_many(due).await;
        None
    }

    /// Moves the plugin's containers from generation `old` to `new`, or back.
    async fn swap(
        &mut self,
        path: &Path,
        old: Arc<P::Library>,
        new: Arc<P::Library>,
        content: Content,
    ) {
        let file = file_name(path);
        let began = std::time::Instant::now();
        let plugin = old.info().name.clone();
        let live = self
            .containers
            .names_where(|c| c.plugin == plugin && c.is_live());
        // A swap that fails does not count against the containers' restart budget.
        let budgets: Vec<_> = live
            .iter()
            .filter_map(|n| {
                self.containers
                    .get(n)
                    .map(|c| (n.clone(), c.restarts.clone()))
            })
            .collect();
        self.log_loaded(&*new);
        self.spawn_spares(&live, &new);
        self.stop_named(&live, "is being reloaded").await;
        if let Err(duplicate) = self.files.install(path, new.clone(), &content) {
            // Cannot happen: the file already provides this plugin. Keep the old one.
            warn!(file, other = %duplicate.other.display(), "swap refused as a duplicate");
        }
        let mut failures = Vec::new();
        for name in &live {
            if !self.start_now(name).await {
                let reason = self
                    .containers
                    .get(name)
                    .and_then(|c| c.status().last_error.clone())
                    .unwrap_or_default();
                failures.push(format!("{name}: {reason}"));
            }
        }
        // Spares not taken (a container that did not start again) end here.
        self.spares.clear();
        if failures.is_empty() {
            // Containers that were failed, waiting or refused their config get a chance
            // on the new version too.
            let others = self
                .containers
                .names_where(|c| c.plugin == plugin && c.wanted && !c.is_live());
            for name in &others {
                self.start_now(name).await;
            }
            info!(
                file,
                plugin = %plugin,
                from_generation = old.generation(),
                to_generation = new.generation(),
                "plugin reloaded"
            );
            self.board.events.publish(EventKind::Reloaded {
                file,
                from_generation: old.generation(),
                to_generation: new.generation(),
            });
            self.board.metrics.reloaded(began.elapsed());
            return;
        }

        let reason = format!(
            "generation {} failed to start ({}); rolled back to generation {}",
            new.generation(),
            failures.join("; "),
            old.generation()
        );
        warn!(file, plugin = %plugin, reason, "plugin rolled back");
        self.board.events.publish(EventKind::RolledBack {
            file: file.clone(),
            generation: old.generation(),
            reason: reason.clone(),
        });
        self.board.metrics.rolled_back(began.elapsed());
        let started = self
            .containers
            .names_where(|c| c.plugin == plugin && c.is_live());
        self.stop_named(&started, "is being rolled back").await;
        self.files.reinstate(path, &old);
        self.files.show(path, |s| {
            *s = super::generations::loaded_status(s.file.clone(), &*old)
        });
        for (name, restarts) in budgets {
            let count = restarts.count;
            if let Some(container) = self.containers.get_mut(&name) {
                container.restarts = restarts;
            }
            self.containers.show(&name, |s| s.restarts = count);
        }
        for name in &live {
            self.start_now(name).await;
        }
        let message = format!("{}: {reason}", path.display());
        self.refuse(
            path,
            Problem::RolledBack,
            message,
            Judged::Content(content.hash),
        );
    }

    /// Spawns the isolated ones of `names` a process on `library` ahead of their stop, so
    /// that it has started and opened the library by the time the old instance is gone.
    fn spawn_spares(&mut self, names: &[String], library: &Arc<P::Library>) {
        for name in names {
            let Some(confinement) = self.containers.get(name).map(|c| c.spec.confinement) else {
                continue;
            };
            if confinement.isolation != Isolation::Process {
                continue;
            }
            match self.platform.spawn(name, library.clone(), &confinement) {
                Ok(worker) => {
                    self.spares.insert(name.clone(), worker);
                }
                // The start spawns one again, and says why if it fails then too.
                Err(e) => {
                    warn!(container = %name, error = %e, "cannot start its new process ahead")
                }
            }
        }
    }

    /// Stops the named containers in reverse dependency order, each after the containers
    /// that require it (which wait for it to be ready again).
    pub(super) async fn stop_named(&mut self, names: &[String], why: &str) {
        for name in self.containers.stop_order(names) {
            self.stop_dependents(&name, why).await;
            // A failed stop is reported in the container's status.
            let _ = self.stop_container(&name).await;
        }
    }

    /// The file is gone: stop its containers, forget it (the sweep unloads it).
    pub(super) async fn remove(&mut self, path: &Path) {
        self.pending.forget(path);
        if self.files.record(path).is_none() {
            return;
        }
        let file = file_name(path);
        self.files.set_file_state(path, FileState::Unloading);
        self.remove_plugin_of(path).await;
        self.files.forget(path);
        info!(file, "plugin file removed");
        self.board.events.publish(EventKind::Removed { file });
    }

    /// Stops the containers of the plugin `path` provides and withdraws it. Configured
    /// containers stay registered, stopped, with the reason; default instances go.
    pub(super) async fn remove_plugin_of(&mut self, path: &Path) {
        let file = file_name(path);
        let Some(plugin) = self.files.withdraw(path) else {
            return;
        };
        let names = self.containers.names_where(|c| c.plugin == plugin);
        self.stop_named(&names, "was removed").await;
        for name in &names {
            let configured = self.containers.get(name).is_some_and(|c| c.spec.configured);
            if configured {
                if let Some(container) = self.containers.get_mut(name) {
                    container.hold = Hold::Free;
                }
                let reason = format!("plugin file {file} was removed");
                self.containers
                    .set_state(name, State::Stopped, Some(reason));
            } else {
                self.containers.deregister(name);
            }
        }
        self.retry_duplicates_of(&plugin);
    }
}
