//! The plugin folder is the desired state: this side of the supervisor converges the
//! loaded generations to it.
//!
//! Events (and rescans) only mark a name as worth a look. A name is looked at once it has
//! been quiet for [`QUIET`]; the look decides from the file itself: gone -> remove; same
//! content hash as before -> nothing (a `touch`); a whole ELF with new content -> add or
//! reload; not yet a whole ELF and changed within `settle_ms` -> look again later (a writer
//! may still be at it; a half-written file is never opened); broken and settled -> refuse,
//! once per content.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::containers::{error_status, loaded_status};
use super::{PluginFile, Supervisor, file_name};
use crate::events::EventKind;
use crate::loader::{Library, LoadError, content_hash};
use crate::status::{FileState, PluginStatus};
use crate::trust;
use crate::watcher::{self, FolderEvent};

/// How long a name must be free of events before it is looked at: long enough to merge
/// the events of one `cp` or rename, far shorter than a human notices.
pub const QUIET: Duration = Duration::from_millis(20);

/// What cheaply tells that a file changed: size, modification time, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        }
    }
}

/// Names waiting to be looked at, and when each last had an event.
#[derive(Debug, Default)]
pub struct Pending {
    due: HashMap<PathBuf, Instant>,
    last_event: HashMap<PathBuf, Instant>,
}

impl Pending {
    /// An event for `path`: look at it once it has been quiet for [`QUIET`].
    pub fn touch(&mut self, path: PathBuf, now: Instant) {
        self.due.insert(path.clone(), now + QUIET);
        self.last_event.insert(path, now);
    }

    /// Look at `path` again at `at` (unless an event brings it forward).
    pub fn retry_at(&mut self, path: PathBuf, at: Instant) {
        let due = self.due.entry(path).or_insert(at);
        *due = (*due).min(at);
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// The names due by `now`, sorted, removed from the queue.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due: Vec<PathBuf> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        due.sort();
        for path in &due {
            self.due.remove(path);
        }
        due
    }

    pub fn last_event(&self, path: &Path) -> Option<Instant> {
        self.last_event.get(path).copied()
    }

    /// `path` was looked at and needs no further look: forget its last event unless
    /// another look is already due.
    pub fn settled(&mut self, path: &Path) {
        if !self.due.contains_key(path) {
            self.last_event.remove(path);
        }
    }

    pub fn forget(&mut self, path: &Path) {
        self.due.remove(path);
        self.last_event.remove(path);
    }
}

/// Whether a name in the folder is a plugin candidate: `*.so`, not a dotfile. Everything
/// else (READMEs, editor and temp files such as `x.so.tmp` or `x.so~`) is ignored quietly.
pub fn is_candidate(name: &str) -> bool {
    name.ends_with(".so") && !name.starts_with('.')
}

/// The candidate names in `dir`, sorted.
pub fn list_candidates(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_candidate(&entry.file_name().to_string_lossy()) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn log_loaded(board: &crate::status::Board, library: &Library) {
    board.events.publish(EventKind::Loaded {
        file: file_name(&library.file),
        plugin: library.info.name.clone(),
        version: library.info.version.clone(),
        generation: library.generation,
    });
    info!(
        file = %file_name(&library.file),
        plugin = %library.info.name,
        version = %library.info.version,
        generation = library.generation,
        sha256 = %library.short_hash(),
        copy = %library.copy.display(),
        "library loaded"
    );
}

/// Why [`read_at_most`] read nothing: the message names the file.
enum ReadError {
    Io(String),
    TooLarge(String),
}

/// The content of `path` (whose metadata said `len` bytes), unless it is more than `max`
/// bytes: a huge file (say a sparse file of terabytes) is refused without being read, and
/// one that grows while being read stops being read past `max`.
fn read_at_most(path: &Path, len: u64, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let too_large = |len: String| {
        ReadError::TooLarge(format!(
            "{}: too large: {len} bytes, plugin files may be at most {max} bytes \
             ({} MiB, host.max_plugin_bytes)",
            path.display(),
            max / (1024 * 1024)
        ))
    };
    if len > max {
        return Err(too_large(len.to_string()));
    }
    let io = |e: std::io::Error| ReadError::Io(format!("{}: cannot read: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(format!("more than {max}")));
    }
    Ok(bytes)
}

/// Load errors a file still being written shows.
fn looks_partial(error: &LoadError) -> bool {
    matches!(
        error,
        LoadError::NotElf { .. } | LoadError::Truncated { .. }
    )
}

impl Supervisor {
    /// Loads `bytes` (whose [`content_hash`] is `hash`) as a new generation of `path`,
    /// counting and timing it in the metrics.
    async fn load_timed(
        &mut self,
        path: &Path,
        bytes: &[u8],
        hash: &str,
    ) -> Result<Arc<Library>, LoadError> {
        let began = std::time::Instant::now();
        let result = self.loader.load_hashed(path, bytes, hash.to_owned()).await;
        self.board.metrics.load(result.is_ok(), began.elapsed());
        result
    }

    /// Starts watching the folder, loads every plugin file in it (in file-name order),
    /// registers and starts their containers, then lists configured containers whose
    /// plugin is missing as failed.
    pub async fn start_all(&mut self) -> std::io::Result<()> {
        let dir = self.settings.plugin_dir.clone();
        // Watch first, so nothing that happens during the scan is missed.
        match watcher::watch(&dir, self.folder_sender.clone()) {
            Ok(watcher) => self.watcher = Some(watcher),
            Err(e) => warn!(
                plugin_dir = %dir.display(),
                error = %e,
                "cannot watch the plugin folder; changes are picked up by periodic rescans only"
            ),
        }
        // Load everything first, then start in dependency waves.
        self.starting_up = true;
        for path in list_candidates(&dir)? {
            if let Some(at) = self.evaluate(&path).await {
                self.pending.retry_at(path, at);
            }
        }
        self.register_missing();
        self.starting_up = false;
        self.converge().await;
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        for path in paths {
            self.release_library_if_unused(&path, None);
        }
        self.board.set_started();
        Ok(())
    }

    pub(super) fn on_folder_event(&mut self, event: FolderEvent) {
        let dir = &self.settings.plugin_dir;
        match event {
            FolderEvent::Changed(path) => match (path.parent(), path.file_name()) {
                (Some(parent), Some(name)) if parent == dir => {
                    // Names that are not plugins (temp files, editors' files) are ignored
                    // right here, so they leave no trace.
                    if is_candidate(&name.to_string_lossy()) {
                        let path = dir.join(name);
                        self.pending.touch(path, Instant::now());
                    }
                }
                _ => self.rescan(true),
            },
            FolderEvent::Rescan(reason) => {
                warn!(reason, "rescanning the plugin folder");
                self.rescan(true);
            }
        }
    }

    /// Marks for a look every name whose stamp differs from the last look (or every name,
    /// when `full`), and every known name that is gone.
    pub(super) fn rescan(&mut self, full: bool) {
        let listed = match list_candidates(&self.settings.plugin_dir) {
            Ok(listed) => listed,
            Err(e) => {
                warn!(plugin_dir = %self.settings.plugin_dir.display(), error = %e, "cannot list the plugin folder");
                return;
            }
        };
        let now = Instant::now();
        for path in &listed {
            let stamp = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
            let known = self.files.get(path).map(|f| f.stamp);
            if full || known != Some(stamp) {
                self.pending.touch(path.clone(), now);
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|path| !listed.contains(path))
            .cloned()
            .collect();
        for path in gone {
            self.pending.touch(path, now);
        }
    }

    /// Looks at every name that is due.
    pub(super) async fn settle_due(&mut self) {
        for path in self.pending.take_due(Instant::now()) {
            match self.evaluate(&path).await {
                Some(at) => self.pending.retry_at(path, at),
                // Settled: its last event no longer matters until the next one.
                None => self.pending.settled(&path),
            }
        }
    }

    /// Looks at one name and acts. Returns when to look again, if it is not settled.
    async fn evaluate(&mut self, path: &Path) -> Option<Instant> {
        if !is_candidate(&file_name(path)) {
            return None;
        }
        let link = match std::fs::symlink_metadata(path) {
            Ok(link) => link,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.remove(path).await;
                return None;
            }
            Err(e) => {
                let message = format!("{}: cannot read: {e}", path.display());
                self.refuse(path, "io", message, format!("io:{e}"));
                return None;
            }
        };
        if link.is_dir() {
            let message = format!("{}: is a folder, not a plugin library", path.display());
            self.refuse(path, "not_a_file", message, "folder".into());
            return None;
        }
        // The file the library's bytes come from: the symlink's target, inside the folder.
        let mut real = path.to_owned();
        if link.file_type().is_symlink() {
            match self.check_symlink(path) {
                Ok(target) => real = target,
                Err((kind, message)) => {
                    self.refuse(path, kind, message.clone(), message);
                    return None;
                }
            }
        }
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                let message = format!("{}: cannot read: {e}", path.display());
                self.refuse(path, "io", message, format!("io:{e}"));
                return None;
            }
        };
        if !meta.is_file() {
            let message = format!("{}: not a regular file", path.display());
            self.refuse(path, "not_a_file", message, "special".into());
            return None;
        }
        if self.settings.strict_modes {
            let trusted = trust::check_folders_to(&self.settings.plugin_dir, &real)
                .and_then(|()| trust::check(path, &meta));
            if let Err(e) = trusted {
                let message = e.to_string();
                self.refuse(path, "untrusted", message.clone(), message);
                return None;
            }
        }
        let stamp = Stamp::of(&meta);
        let max = self.host.max_plugin_bytes.get();
        let bytes = match read_at_most(path, meta.len(), max) {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge(message)) => {
                let key = format!("too_large:{}", meta.len());
                self.refuse(path, "too_large", message, key);
                return None;
            }
            Err(ReadError::Io(message)) => {
                self.refuse(path, "io", message.clone(), format!("io:{message}"));
                return None;
            }
        };
        let after = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
        if after != Some(stamp) {
            // Written to while we read it: look again once it is quiet.
            return Some(Instant::now() + QUIET);
        }
        let entry = self.files.entry(path.to_owned()).or_default();
        entry.stamp = Some(stamp);
        let hash = content_hash(&bytes);
        if entry.seen.as_deref() == Some(hash.as_str()) {
            return None;
        }
        match entry.library.clone() {
            Some(old) if old.sha256 == hash => {
                // The running content is back (after refused new content): clear the error.
                entry.seen = Some(hash);
                self.board.set_plugin(loaded_status(&file_name(path), &old));
                None
            }
            Some(old) => self.reload(path, &bytes, hash, old, &meta).await,
            None => self.add(path, &bytes, hash, &meta).await,
        }
    }

    /// A symlink is followed only when its target is inside the plugin folder. A dangling
    /// or looping link is an `io` error; one leading outside is `untrusted`.
    fn check_symlink(&self, path: &Path) -> Result<PathBuf, (&'static str, String)> {
        let target = std::fs::canonicalize(path).map_err(|e| {
            let message = format!("{}: cannot resolve the symlink: {e}", path.display());
            ("io", message)
        })?;
        if target.starts_with(&self.settings.plugin_dir) {
            Ok(target)
        } else {
            Err((
                "untrusted",
                format!(
                    "{}: symlink target {} is outside the plugin folder {}",
                    path.display(),
                    target.display(),
                    self.settings.plugin_dir.display()
                ),
            ))
        }
    }

    /// When a file that fails to load may still be being written, when to look again.
    fn still_settling(&self, path: &Path, meta: &Metadata) -> Option<Instant> {
        let now = Instant::now();
        let event_age = self
            .pending
            .last_event(path)
            .map(|at| now.duration_since(at));
        // A modification time in the future tells nothing; the events still do.
        let write_age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        let age = event_age.into_iter().chain(write_age).min()?;
        let settle = self.host.settle_ms.duration();
        (age < settle).then(|| now + (settle - age))
    }

    /// Records that `path` cannot be used, logging it once per `key` (content or condition).
    /// A generation of it already running keeps running.
    fn refuse(&mut self, path: &Path, kind: &str, message: String, key: String) {
        let file = file_name(path);
        let entry = self.files.entry(path.to_owned()).or_default();
        if entry.seen.as_deref() == Some(key.as_str()) {
            return;
        }
        entry.seen = Some(key);
        let running = entry.library.as_ref().map(|l| l.generation);
        error!(file, kind, error = %message, "plugin file refused");
        self.board.events.publish(EventKind::Refused {
            file: file.clone(),
            kind: kind.to_owned(),
            error: message.clone(),
        });
        match running {
            Some(generation) => self.board.update_plugin(&file, |p| {
                p.status = FileState::Error;
                p.error = Some(if kind == "rolled_back" {
                    message
                } else {
                    format!("{message}; generation {generation} keeps running")
                });
                p.error_kind = Some(kind.to_owned());
            }),
            None => self.board.set_plugin(error_status(&file, kind, message)),
        }
    }

    /// [`Self::refuse`] for a load error, with what it tells about the plugin.
    fn refuse_load(&mut self, path: &Path, error: &LoadError, hash: String) {
        self.refuse(path, error.kind(), error.to_string(), hash);
        let file = file_name(path);
        self.board.update_plugin(&file, |p| {
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

    fn set_file_state(&self, path: &Path, state: FileState) {
        let file = file_name(path);
        let known = self.board.read().plugins.iter().any(|p| p.file == file);
        if known {
            self.board.update_plugin(&file, |p| p.status = state);
        } else {
            self.board.set_plugin(PluginStatus {
                status: state,
                ..error_status(&file, "", String::new())
            });
            self.board.update_plugin(&file, |p| {
                p.error = None;
                p.error_kind = None;
            });
        }
    }

    /// Makes `library` the file's generation in memory; refuses a second file declaring a
    /// plugin name another file already provides.
    fn install(&mut self, path: &Path, library: Arc<Library>, hash: String) -> bool {
        let file = file_name(path);
        let name = library.info.name.clone();
        if let Some(other) = self.providers.get(&name).filter(|other| *other != path) {
            let message = format!(
                "{}: plugin `{name}` is already provided by {}",
                path.display(),
                other.display()
            );
            self.refuse(path, "duplicate_plugin", message, hash);
            self.board.update_plugin(&file, |p| p.name = Some(name));
            self.unload_generation(library);
            return false;
        }
        log_loaded(&self.board, &library);
        self.board.set_plugin(loaded_status(&file, &library));
        self.providers.insert(name.clone(), path.to_owned());
        let entry = self.files.entry(path.to_owned()).or_default();
        entry.plugin = Some(name);
        entry.library = Some(library);
        entry.seen = Some(hash);
        true
    }

    /// A new plugin file (or new content of one not in memory): load it, register and
    /// start its containers.
    async fn add(
        &mut self,
        path: &Path,
        bytes: &[u8],
        hash: String,
        meta: &Metadata,
    ) -> Option<Instant> {
        self.set_file_state(path, FileState::Loading);
        let library = match self.load_timed(path, bytes, &hash).await {
            Ok(library) => library,
            Err(e) => {
                if looks_partial(&e) {
                    if let Some(at) = self.still_settling(path, meta) {
                        return Some(at);
                    }
                }
                self.refuse_load(path, &e, hash);
                return None;
            }
        };
        let name = library.info.name.clone();
        if !self.install(path, library, hash) {
            return None;
        }
        let indices = self.ensure_registered(&name);
        if self.starting_up {
            return None; // `start_all` starts everything together.
        }
        for index in indices {
            if self.containers[index].wanted && self.containers[index].instance.is_none() {
                self.start_container(index).await;
            }
        }
        self.release_library_if_unused(path, None);
        None
    }

    /// Loads the file again for a container start when no generation of it is in memory.
    pub(super) async fn load_again(&mut self, path: &Path) -> Result<Arc<Library>, String> {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        let bytes = read_at_most(path, len, self.host.max_plugin_bytes.get())
            .map_err(|(ReadError::Io(message) | ReadError::TooLarge(message))| message)?;
        let hash = content_hash(&bytes);
        match self.load_timed(path, &bytes, &hash).await {
            Ok(library) => {
                if self.install(path, library.clone(), hash) {
                    Ok(library)
                } else {
                    Err(format!("{}: refused as a duplicate plugin", path.display()))
                }
            }
            Err(e) => {
                let message = e.to_string();
                self.refuse_load(path, &e, hash);
                Err(message)
            }
        }
    }

    /// New content for a file whose generation `old` is in memory: load it beside the old,
    /// swap the containers over, and roll back if the new ones do not start.
    async fn reload(
        &mut self,
        path: &Path,
        bytes: &[u8],
        hash: String,
        old: Arc<Library>,
        meta: &Metadata,
    ) -> Option<Instant> {
        let file = file_name(path);
        let began = std::time::Instant::now();
        self.set_file_state(path, FileState::Loading);
        let new = match self.load_timed(path, bytes, &hash).await {
            Ok(new) => new,
            Err(e) => {
                if looks_partial(&e) {
                    if let Some(at) = self.still_settling(path, meta) {
                        self.set_file_state(path, FileState::Loaded);
                        return Some(at);
                    }
                }
                self.refuse_load(path, &e, hash);
                return None;
            }
        };
        if new.info.name != old.info.name {
            // Another plugin now lives in this file: remove the old one, add the new one.
            self.remove_plugin_of(path).await;
            drop(old);
            let name = new.info.name.clone();
            if self.install(path, new, hash) {
                for index in self.ensure_registered(&name) {
                    if self.containers[index].wanted {
                        self.start_container(index).await;
                    }
                }
                self.release_library_if_unused(path, None);
            }
            return None;
        }
        let plugin = old.info.name.clone();
        let live: Vec<String> = self
            .containers
            .iter()
            .filter(|c| c.plugin == plugin && c.instance.is_some())
            .map(|c| c.name.clone())
            .collect();
        log_loaded(&self.board, &new);
        self.stop_named(&live).await;
        self.swap_generation(path, new.clone());
        let mut failures = Vec::new();
        for name in &live {
            if !self.start_named(name).await {
                let reason = self
                    .board
                    .container(name)
                    .and_then(|c| c.last_error)
                    .unwrap_or_default();
                failures.push(format!("{name}: {reason}"));
            }
        }
        if failures.is_empty() {
            // Also give containers that were failed or waiting a chance on the new version.
            let others: Vec<String> = self
                .containers
                .iter()
                .filter(|c| c.plugin == plugin && c.wanted && c.instance.is_none())
                .map(|c| c.name.clone())
                .collect();
            for name in &others {
                self.start_named(name).await;
            }
            info!(
                file,
                plugin = %plugin,
                from_generation = old.generation,
                to_generation = new.generation,
                "plugin reloaded"
            );
            self.board.events.publish(EventKind::Reloaded {
                file: file.clone(),
                from_generation: old.generation,
                to_generation: new.generation,
            });
            self.board.metrics.reloaded(began.elapsed());
            drop(new);
            self.unload_generation(old);
            if let Some(entry) = self.files.get_mut(path) {
                entry.seen = Some(hash);
            }
            self.release_library_if_unused(path, None);
            return None;
        }

        let reason = format!(
            "generation {} failed to start ({}); rolled back to generation {}",
            new.generation,
            failures.join("; "),
            old.generation
        );
        warn!(file, plugin = %plugin, reason, "plugin rolled back");
        self.board.events.publish(EventKind::RolledBack {
            file: file.clone(),
            generation: old.generation,
            reason: reason.clone(),
        });
        self.board.metrics.rolled_back(began.elapsed());
        let started: Vec<String> = self
            .containers
            .iter()
            .filter(|c| c.plugin == plugin && c.instance.is_some())
            .map(|c| c.name.clone())
            .collect();
        self.stop_named(&started).await;
        self.swap_generation(path, old.clone());
        for name in &live {
            self.start_named(name).await;
        }
        drop(old);
        self.unload_generation(new);
        self.refuse(
            path,
            "rolled_back",
            format!("{}: {reason}", path.display()),
            hash,
        );
        self.release_library_if_unused(path, None);
        None
    }

    /// Makes `library` the file's generation in memory (the caller holds the previous one).
    fn swap_generation(&mut self, path: &Path, library: Arc<Library>) {
        let file = file_name(path);
        self.board.set_plugin(loaded_status(&file, &library));
        if let Some(entry) = self.files.get_mut(path) {
            entry.library = Some(library);
        }
    }

    /// Stops the named containers in reverse registration order.
    async fn stop_named(&mut self, names: &[String]) {
        for name in names.iter().rev() {
            if let Some(index) = self.index_of(name) {
                let timeout = self.containers[index].stop_timeout;
                // A failed stop is reported in the container's status.
                let _ = self.stop_container(index, timeout).await;
            }
        }
    }

    async fn start_named(&mut self, name: &str) -> bool {
        match self.index_of(name) {
            Some(index) => self.start_container(index).await,
            None => false,
        }
    }

    /// The file is gone: stop its containers, unload it, forget it.
    async fn remove(&mut self, path: &Path) {
        self.pending.forget(path);
        let file = file_name(path);
        if self.files.contains_key(path) {
            self.set_file_state(path, FileState::Unloading);
            self.remove_plugin_of(path).await;
            self.files.remove(path);
            info!(file, "plugin file removed");
            self.board
                .events
                .publish(EventKind::Removed { file: file.clone() });
        }
        self.board.write().plugins.retain(|p| p.file != file);
    }

    /// Stops and forgets the containers of the plugin `path` provides, and unloads it.
    /// Configured containers stay registered, stopped, with the reason.
    async fn remove_plugin_of(&mut self, path: &Path) {
        let file = file_name(path);
        let plugin = self
            .files
            .get(path)
            .and_then(|f| f.plugin.clone())
            .filter(|name| self.providers.get(name).map(PathBuf::as_path) == Some(path));
        if let Some(plugin) = plugin {
            let names: Vec<String> = self
                .containers
                .iter()
                .filter(|c| c.plugin == plugin)
                .map(|c| c.name.clone())
                .collect();
            self.stop_named(&names).await;
            for name in &names {
                let Some(index) = self.index_of(name) else {
                    continue;
                };
                if self.containers[index].configured {
                    let reason = format!("plugin file {file} was removed");
                    self.set_state(name, crate::status::State::Stopped, Some(reason));
                } else {
                    self.deregister(index);
                }
            }
            self.providers.remove(&plugin);
            self.retry_duplicates_of(&plugin);
        }
        let library = self.files.get_mut(path).and_then(|f| f.library.take());
        if let Some(library) = library {
            self.unload_generation(library);
        }
        if let Some(entry) = self.files.get_mut(path) {
            *entry = PluginFile::default();
        }
    }

    /// Files refused because another file provided their plugin get another look.
    fn retry_duplicates_of(&mut self, plugin: &str) {
        let refused: Vec<String> = self
            .board
            .read()
            .plugins
            .iter()
            .filter(|p| {
                p.error_kind.as_deref() == Some("duplicate_plugin")
                    && p.name.as_deref() == Some(plugin)
            })
            .map(|p| p.file.clone())
            .collect();
        let now = Instant::now();
        for file in refused {
            let path = self.settings.plugin_dir.join(file);
            if let Some(entry) = self.files.get_mut(&path) {
                entry.seen = None;
            }
            self.pending.touch(path, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_so_files_but_not_dotfiles_or_temp_files() {
        assert!(is_candidate("libecho.so"));
        assert!(!is_candidate(".libecho.so"));
        assert!(!is_candidate("libecho.so.tmp"));
        assert!(!is_candidate("libecho.so~"));
        assert!(!is_candidate("README.txt"));
        assert!(!is_candidate(".#libecho.so"));
    }

    #[test]
    fn files_above_the_limit_are_not_read() {
        let dir = tempfile::tempdir().expect("a temp folder");
        let path = dir.path().join("big.so");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(8 << 30).expect("a sparse 8 GiB file");
        let refused = |len, max| match read_at_most(&path, len, max) {
            Err(ReadError::TooLarge(message)) => message,
            Err(ReadError::Io(message)) => panic!("io error: {message}"),
            Ok(bytes) => panic!("read {} bytes", bytes.len()),
        };
        let message = refused(8 << 30, 1024 * 1024);
        assert!(
            message.contains("big.so: too large: 8589934592 bytes"),
            "{message}"
        );
        assert!(
            message.contains("at most 1048576 bytes (1 MiB"),
            "{message}"
        );
        // A file that grew since its size was taken is cut off at the limit.
        let message = refused(10, 4096);
        assert!(message.contains("more than 4096 bytes"), "{message}");
        std::fs::write(&path, b"small").expect("write");
        assert!(matches!(read_at_most(&path, 5, 5), Ok(b) if b == b"small"));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_waits_for_quiet_and_keeps_the_earliest_retry() {
        let mut pending = Pending::default();
        let start = Instant::now();
        let a = PathBuf::from("/p/a.so");
        pending.touch(a.clone(), start);
        assert_eq!(pending.next_due(), Some(start + QUIET));
        assert!(pending.take_due(start).is_empty());
        // Another event pushes the look back.
        pending.touch(a.clone(), start + Duration::from_millis(10));
        assert!(pending.take_due(start + QUIET).is_empty());
        assert_eq!(
            pending.take_due(start + Duration::from_millis(30)),
            vec![a.clone()]
        );
        assert_eq!(pending.next_due(), None);
        assert_eq!(
            pending.last_event(&a),
            Some(start + Duration::from_millis(10))
        );

        pending.retry_at(a.clone(), start + Duration::from_secs(1));
        pending.retry_at(a.clone(), start + Duration::from_millis(500));
        assert_eq!(pending.next_due(), Some(start + Duration::from_millis(500)));
        pending.forget(&a);
        assert_eq!(pending.next_due(), None);
        assert_eq!(pending.last_event(&a), None);
    }
}
