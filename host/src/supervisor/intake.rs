//! Taking in the folder: the first scan, events and rescans marking names, looks at the
//! names that are due, and registering the containers of a plugin that arrived.

use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use super::admission::{Admission, Known, admit};
use super::folder::{LOST_POLL, QUIET};
use super::generations::Judged;
use super::set::Spec;
use super::{Phase, Supervisor};
use crate::events::EventKind;
use crate::loader::LoadError;
use crate::model::FolderStatus;
use crate::platform::{Content, Generation, Platform, Problem, file_name, is_candidate};
use crate::watcher::FolderEvent;

impl<P: Platform> Supervisor<P> {
    /// Starts watching the folder, loads every plugin file in it (in file-name order),
    /// registers their containers and lists configured containers whose plugin is missing
    /// as failed, then starts everything in dependency waves.
    pub async fn start_all(&mut self) -> std::io::Result<()> {
        let dir = self.settings.plugin_dir.clone();
        // Watch first, so nothing that happens during the scan is missed.
        self.check_folder();
        self.phase = Phase::StartingUp;
        let listed = self.platform.list(&dir);
        if let Ok(paths) = &listed {
            for path in paths {
                if let Some(at) = self.look_at(path).await {
                    self.pending.retry_at(path.clone(), at);
                }
            }
        }
        self.register_missing();
        self.phase = Phase::Running;
        self.converge().await;
        self.files
            .sweep(&mut self.platform, &self.containers.awaiting_restart());
        self.board.set_started();
        listed.map(|_| ())
    }

    pub(super) fn on_folder_event(&mut self, event: FolderEvent) {
        let dir = &self.settings.plugin_dir;
        // A file renamed into the folder is whole: looked at without the quiet period.
        let whole = matches!(event, FolderEvent::Arrived(_));
        match event {
            FolderEvent::Changed(path) | FolderEvent::Arrived(path) => {
                match (path.parent(), path.file_name()) {
                    (Some(parent), Some(name)) if parent == dir => {
                        // Names that are not plugins (temp files, editors' files) are ignored
                        // right here, so they leave no trace.
                        if is_candidate(&name.to_string_lossy()) {
                            let path = dir.join(name);
                            if whole {
                                self.pending.arrived(path, Instant::now());
                            } else {
                                self.pending.touch(path, Instant::now());
                            }
                        }
                    }
                    // The folder itself (removed, renamed), or something outside it.
                    _ => {
                        self.check_folder();
                        self.rescan(true);
                    }
                }
            }
            FolderEvent::Rescan(reason) => {
                warn!(reason, "rescanning the plugin folder");
                self.check_folder();
                self.rescan(true);
            }
        }
    }

    /// Checks that the folder is still the one watched: a folder that is gone is reported
    /// (its plugins keep running) and looked for every [`LOST_POLL`]; one that is back, or
    /// replaced, is watched again and rescanned.
    pub(super) fn check_folder(&mut self) {
        let dir = self.settings.plugin_dir.clone();
        match self.platform.identity(&dir) {
            Err(e) => {
                if self.watch.lost.is_none() {
                    warn!(plugin_dir = %dir.display(), error = %e, "the plugin folder is gone; its plugins keep running; looking for it to come back");
                    self.platform.unwatch();
                    self.watch.armed = None;
                }
                self.watch.lost = Some(format!("{}: {e}", dir.display()));
                self.watch.next_look = Some(Instant::now() + LOST_POLL);
            }
            Ok(identity) if self.watch.armed != Some(identity) => {
                let first = self.watch.armed.is_none() && self.watch.lost.is_none();
                match self.platform.watch(&dir, self.inbox.folder_sender.clone()) {
                    Ok(()) => self.watch.armed = Some(identity),
                    Err(e) => warn!(
                        plugin_dir = %dir.display(),
                        error = %e,
                        "cannot watch the plugin folder; changes are picked up by periodic rescans only"
                    ),
                }
                if self.watch.lost.take().is_some() || !first {
                    info!(plugin_dir = %dir.display(), "the plugin folder is back; watching it again");
                    self.rescan(true);
                }
                self.watch.next_look = None;
            }
            Ok(_) => {}
        }
        self.board.put_folder(&FolderStatus {
            path: dir.display().to_string(),
            watching: self.watch.armed.is_some(),
            error: self.watch.lost.clone(),
        });
    }

    /// Marks for a look every name whose stamp differs from the last look (or every name,
    /// when `full`), and every known name that is gone.
    pub(super) fn rescan(&mut self, full: bool) {
        if self.watch.lost.is_some() {
            return; // Nothing to list; its plugins keep running until it is back.
        }
        let dir = &self.settings.plugin_dir;
        let listed = match self.platform.list(dir) {
            Ok(listed) => listed,
            Err(e) => {
                warn!(plugin_dir = %dir.display(), error = %e, "cannot list the plugin folder");
                return;
            }
        };
        let now = Instant::now();
        for path in &listed {
            let stamp = self.platform.stamp(path);
            let known = self.files.record(path).map(|f| f.stamp);
            if full || known != Some(stamp) {
                self.pending.touch(path.clone(), now);
            }
        }
        for path in self.files.paths() {
            if !listed.contains(&path) {
                self.pending.touch(path, now);
            }
        }
    }

    /// Looks at every name that is due.
    pub(super) async fn settle_due(&mut self) {
        for path in self.pending.take_due(Instant::now()) {
            match self.look_at(&path).await {
                Some(at) => self.pending.retry_at(path, at),
                // Settled: its last event no longer matters until the next one.
                None => self.pending.settled(&path),
            }
        }
    }

    /// Looks at one name and acts. Returns when to look again, if it is not settled.
    pub(super) async fn look_at(&mut self, path: &Path) -> Option<Instant> {
        if !is_candidate(&file_name(path)) {
            return None;
        }
        let observation = self.platform.look(path, &self.look_rules());
        let known = self.files.record(path).map(|r| Known {
            seen: r.seen.as_deref(),
            admitted: r.admitted.as_deref(),
            in_memory: r.current.is_some(),
        });
        let admission = admit(known, observation);
        match admission {
            Admission::Remove => {
                self.remove(path).await;
                None
            }
            Admission::LookAgain => Some(Instant::now() + QUIET),
            Admission::Unusable {
                problem,
                message,
                key,
            } => {
                self.refuse(path, problem, message, Judged::Condition(key));
                None
            }
            Admission::Unchanged(content) => {
                self.files.record_mut(path).stamp = Some(content.stamp);
                None
            }
            Admission::Restore(content) => {
                self.files.record_mut(path).stamp = Some(content.stamp);
                self.files.restore(path);
                None
            }
            Admission::Add(content) => {
                self.files.record_mut(path).stamp = Some(content.stamp);
                self.add(path, content).await
            }
            Admission::Replace(content) => {
                self.files.record_mut(path).stamp = Some(content.stamp);
                self.replace(path, content).await
            }
        }
    }

    /// Records that the folder's content of `path` cannot be used. If a generation of it
    /// serves containers, its content is kept so restarts use it, not the refused one.
    pub(super) fn refuse(
        &mut self,
        path: &Path,
        problem: Problem,
        message: String,
        judged: Judged,
    ) {
        self.keep_content_in_service(path);
        self.files.refuse(path, problem, message, judged);
    }

    fn keep_content_in_service(&mut self, path: &Path) {
        let Some(record) = self.files.record(path) else {
            return;
        };
        if record.fallback.is_some() {
            return;
        }
        let (Some(library), Some(stamp)) = (record.current.clone(), record.stamp) else {
            return;
        };
        match self.platform.read_copy(&library) {
            Ok(bytes) => {
                self.files.record_mut(path).fallback = Some(Content {
                    bytes: Arc::new(bytes),
                    hash: library.sha256().to_owned(),
                    stamp,
                });
            }
            Err(e) => {
                warn!(file = %file_name(path), error = %e, "cannot keep the content in service; a restart will load the folder's file")
            }
        }
    }

    /// [`Self::refuse`] for a load error, with what it tells about the plugin.
    pub(super) fn refuse_load(&mut self, path: &Path, error: &LoadError, hash: &str) {
        let judged = match error {
            // The copy folder's fault, not the content's: the next look (a touch) tries again.
            LoadError::Copy { .. } => Judged::Condition(format!("copy_failed:{hash}")),
            _ => Judged::Content(hash.to_owned()),
        };
        self.refuse(path, Problem::Load(error.kind()), error.to_string(), judged);
        self.files.show(path, |p| {
            if p.name.is_none() {
                p.name = error.plugin().map(str::to_owned);
            }
            if let LoadError::InterfaceMismatch {
                plugin_interface, ..
            } = error
            {
                p.interface_version = Some(plugin_interface.to_string());
            }
        });
    }

    /// Loads `content` as a new generation of `path`, counted and timed in the metrics.
    pub(super) async fn load_timed(
        &mut self,
        path: &Path,
        content: &Content,
    ) -> Result<Arc<P::Library>, LoadError> {
        let began = std::time::Instant::now();
        let result = self.platform.load(path, content).await;
        self.board.metrics.load(result.is_ok(), began.elapsed());
        result
    }

    pub(super) fn log_loaded(&self, library: &P::Library) {
        let file = file_name(library.file());
        self.board.events.publish(EventKind::Loaded {
            file: file.clone(),
            plugin: library.info().name.clone(),
            version: library.info().version.clone(),
            generation: library.generation(),
        });
        info!(
            file,
            plugin = %library.info().name,
            version = %library.info().version,
            generation = library.generation(),
            sha256 = %library.short_hash(),
            copy = %library.copy().display(),
            "library loaded"
        );
    }

    /// Makes sure the containers of `plugin` are registered: the config's instances of it
    /// (in file order), or else one instance named after the plugin. Returns their names
    /// in registration order.
    pub(super) fn ensure_registered(&mut self, plugin: &str) -> Vec<String> {
        let configured: Vec<_> = self
            .settings
            .config
            .containers
            .iter()
            .filter(|(_, c)| c.plugin == plugin)
            .map(|(name, c)| (name.as_str().to_owned(), c.clone()))
            .collect();
        let default_requires = self
            .files
            .current_of(plugin)
            .map(|l| l.default_requires().to_vec())
            .unwrap_or_default();
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
            } else if !self.containers.contains(plugin) {
                let spec = Spec::resolve(None, &self.host, &default_requires);
                self.register(plugin, plugin, spec);
            }
        }
        for (name, config) in &configured {
            if !self.containers.contains(name) {
                let spec = Spec::resolve(Some(config), &self.host, &default_requires);
                self.register(name, plugin, spec);
            }
        }
        self.containers.names_where(|c| c.plugin == plugin)
    }

    fn register(&mut self, name: &str, plugin: &str, spec: Spec) {
        self.containers.register(name, plugin, spec);
        info!(container = %name, plugin = %plugin, "container registered");
    }

    /// Registers every configured container not registered yet (their plugin is not in
    /// the folder): they are listed as failed until it appears.
    pub(super) fn register_missing(&mut self) {
        let missing: Vec<_> = self
            .settings
            .config
            .containers
            .iter()
            .filter(|(name, _)| !self.containers.contains(name.as_str()))
            .map(|(name, c)| (name.as_str().to_owned(), c.clone()))
            .collect();
        for (name, config) in missing {
            let spec = Spec::resolve(Some(&config), &self.host, &[]);
            self.register(&name, &config.plugin, spec);
            let message = format!(
                "no plugin named `{}` in {}",
                config.plugin,
                self.settings.plugin_dir.display()
            );
            self.fail(&name, message);
        }
    }

    /// Files refused because another file provided `plugin` get another look.
    pub(super) fn retry_duplicates_of(&mut self, plugin: &str) {
        let now = Instant::now();
        for path in self.files.paths() {
            let blocked = self
                .files
                .record(&path)
                .is_some_and(|r| r.duplicate_of.as_deref() == Some(plugin));
            if blocked {
                let record = self.files.record_mut(&path);
                record.seen = None;
                record.duplicate_of = None;
                self.pending.touch(path, now);
            }
        }
    }
}
