//! Library generations and the plugin files they come from.
//!
//! Each file in the folder has a record: the plugin its content declares, the generation in
//! memory serving it, the content in service (kept as bytes while the folder holds other,
//! refused content, so a restart after a rollback uses the good version), and its status.
//! Generations that stopped serving a file but are still held by an instance are
//! "retired". After every step the supervisor sweeps: each generation nothing but this
//! module holds is unloaded, and one that cannot be is listed in `not_unloaded`, so the
//! API and the process's memory agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, warn};

use super::closing::{Closing, Verdict};
use crate::events::EventKind;
use crate::model::{FileState, NotUnloaded, PluginStatus, rfc3339};
use crate::platform::{Content, Generation, Platform, Problem, Stamp, Unloaded, file_name};
use crate::status::Board;

/// A plugin file in the folder and what the host made of it.
pub struct FileRecord<L> {
    /// The plugin the content in service declares.
    pub plugin: Option<String>,
    /// The generation in memory serving this file.
    pub current: Option<Arc<L>>,
    /// The hash of the content in service.
    pub admitted: Option<String>,
    /// The content in service, kept while the folder holds other content that was refused.
    pub fallback: Option<Content>,
    /// The last content (hash) or condition judged, so nothing is loaded or reported twice.
    pub seen: Option<String>,
    /// Size, modification time and inode at the last look, for cheap rescans.
    pub stamp: Option<Stamp>,
    /// Refused because another file provides this plugin: looked at again when it goes.
    pub duplicate_of: Option<String>,
    status: PluginStatus,
}

impl<L> FileRecord<L> {
    pub fn status(&self) -> &PluginStatus {
        &self.status
    }
}

/// A second file declaring a plugin that another file provides.
#[derive(Debug)]
pub struct Duplicate {
    pub other: PathBuf,
}

/// What a refusal is about, so it is reported once: content (by its hash) or a condition
/// of the file (unreadable, untrusted, a folder...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    Content(String),
    Condition(String),
}

impl Judged {
    fn key(&self) -> &str {
        match self {
            Self::Content(hash) | Self::Condition(hash) => hash,
        }
    }
}

/// Every plugin file and every generation in memory.
pub struct Generations<L> {
    files: BTreeMap<PathBuf, FileRecord<L>>,
    /// Which file provides each plugin name.
    providers: BTreeMap<String, PathBuf>,
    retired: Vec<Arc<L>>,
    not_unloaded: Vec<NotUnloaded>,
    closing: Closing,
    board: Board,
}

impl<L: Generation> Generations<L> {
    /// `closing` tracks the closes of generations, which run on threads of their own.
    pub fn new(board: Board, closing: Closing) -> Self {
        Self {
            files: BTreeMap::new(),
            providers: BTreeMap::new(),
            retired: Vec::new(),
            not_unloaded: Vec::new(),
            closing,
            board,
        }
    }

    pub fn record(&self, path: &Path) -> Option<&FileRecord<L>> {
        self.files.get(path)
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.keys().cloned().collect()
    }

    /// The record of `path`, created (unknown, not shown) if there is none.
    pub fn record_mut(&mut self, path: &Path) -> &mut FileRecord<L> {
        self.files
            .entry(path.to_owned())
            .or_insert_with(|| FileRecord {
                plugin: None,
                current: None,
                admitted: None,
                fallback: None,
                seen: None,
                stamp: None,
                duplicate_of: None,
                status: PluginStatus::new(&file_name(path)),
            })
    }

    /// The file that provides `plugin`.
    pub fn provider(&self, plugin: &str) -> Option<&Path> {
        self.providers.get(plugin).map(PathBuf::as_path)
    }

    pub fn plugins(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// The generation in memory for `plugin`, if any.
    pub fn current_of(&self, plugin: &str) -> Option<&Arc<L>> {
        let path = self.providers.get(plugin)?;
        self.files.get(path)?.current.as_ref()
    }

    /// Every generation in memory: the files' current ones and the retired ones.
    #[cfg(test)]
    pub fn in_memory(&self) -> impl Iterator<Item = &Arc<L>> {
        self.in_memory_all()
    }

    pub fn not_unloaded(&self) -> &[NotUnloaded] {
        &self.not_unloaded
    }

    /// Changes the file's status with `f` and shows it.
    pub fn show(&mut self, path: &Path, f: impl FnOnce(&mut PluginStatus)) {
        let record = self.record_mut(path);
        f(&mut record.status);
        let status = record.status.clone();
        self.board.put_plugin(&status);
    }

    pub fn set_file_state(&mut self, path: &Path, state: FileState) {
        self.show(path, |s| s.status = state);
    }

    /// Makes `library` (loaded from `content`) the file's generation in service; the one
    /// before it is retired. Refused if another file provides the same plugin.
    pub fn install(
        &mut self,
        path: &Path,
        library: Arc<L>,
        content: &Content,
    ) -> Result<(), Duplicate> {
        let plugin = library.info().name.clone();
        if let Some(other) = self.providers.get(&plugin).filter(|other| *other != path) {
            return Err(Duplicate {
                other: other.clone(),
            });
        }
        self.providers.insert(plugin.clone(), path.to_owned());
        let record = self.record_mut(path);
        if let Some(old) = record.current.take() {
            self.retired.push(old);
        }
        let record = self.record_mut(path);
        record.plugin = Some(plugin);
        record.admitted = Some(content.hash.clone());
        record.seen = Some(content.hash.clone());
        record.fallback = None;
        record.duplicate_of = None;
        record.current = Some(library.clone());
        self.show(path, |s| *s = loaded_status(s.file.clone(), &*library));
        Ok(())
    }

    /// Puts a generation loaded again from the content in service in service: the file's
    /// judgement (a refused newer content, the kept bytes) stays as it is.
    pub fn serve_again(&mut self, path: &Path, library: Arc<L>) {
        let record = self.record_mut(path);
        if let Some(old) = record.current.replace(library.clone()) {
            self.retired.push(old);
        }
        self.show(path, |s| {
            let fresh = loaded_status(s.file.clone(), &*library);
            s.status = if s.error_kind.is_some() {
                FileState::Error
            } else {
                FileState::Loaded
            };
            s.generation = fresh.generation;
            s.loaded_at = fresh.loaded_at;
            s.sha256 = fresh.sha256;
            s.version = fresh.version;
            s.interface_version = fresh.interface_version;
            s.name = fresh.name;
        });
    }

    /// Puts the generation that served the file before back in service (a rollback):
    /// `library` must be that generation, still in memory.
    pub fn reinstate(&mut self, path: &Path, library: &Arc<L>) {
        let record = self.record_mut(path);
        if let Some(new) = record.current.replace(library.clone()) {
            self.retired.push(new);
        }
        self.retired.retain(|r| !Arc::ptr_eq(r, library));
        let record = self.record_mut(path);
        record.admitted = Some(library.sha256().to_owned());
        // The new content is judged again (refused) by the caller.
        record.seen = None;
    }

    /// The file no longer provides a plugin (it is gone or holds another one): forget the
    /// provider and retire its generation. Returns the plugin it provided.
    pub fn withdraw(&mut self, path: &Path) -> Option<String> {
        let record = self.files.get_mut(path)?;
        let plugin = record.plugin.take();
        record.admitted = None;
        record.fallback = None;
        if let Some(old) = record.current.take() {
            self.retired.push(old);
        }
        let plugin = plugin?;
        if self.providers.get(&plugin).map(PathBuf::as_path) == Some(path) {
            self.providers.remove(&plugin);
            Some(plugin)
        } else {
            None
        }
    }

    /// Forgets a file that is gone.
    pub fn forget(&mut self, path: &Path) {
        self.withdraw(path);
        self.files.remove(path);
        self.board.remove_plugin(&file_name(path));
    }

    /// Records that the folder's content of `path` cannot be used, logging it once per
    /// `key` (content or condition). A generation in service keeps serving.
    pub fn refuse(&mut self, path: &Path, problem: Problem, message: String, judged: Judged) {
        let file = file_name(path);
        let record = self.record_mut(path);
        if record.seen.as_deref() == Some(judged.key()) {
            return;
        }
        record.seen = Some(judged.key().to_owned());
        // Only a duplicate refusal (which sets it again) waits for another file to go.
        record.duplicate_of = None;
        let serving = record.current.as_ref().map(|l| l.generation());
        let kept = record.admitted.is_some() && record.plugin.is_some();
        error!(file, kind = problem.as_str(), error = %message, "plugin file refused");
        self.board.events.publish(EventKind::Refused {
            file,
            kind: problem.as_str().to_owned(),
            error: message.clone(),
        });
        let refused_sha = match &judged {
            Judged::Content(hash) => Some(hash[..12.min(hash.len())].to_owned()),
            Judged::Condition(_) => None,
        };
        self.show(path, |s| {
            s.status = FileState::Error;
            s.error = Some(match serving {
                Some(generation) if problem != Problem::RolledBack => {
                    format!("{message}; generation {generation} keeps running")
                }
                _ => message,
            });
            s.error_kind = Some(problem.as_str().to_owned());
            s.refused_sha256 = if kept { refused_sha } else { None };
            if !kept {
                s.version = None;
                s.interface_version = None;
                s.generation = None;
                s.sha256 = None;
                s.loaded_at = None;
                s.name = None;
            }
        });
    }

    /// The folder's content of `path` is the content in service again: clear the refusal.
    pub fn restore(&mut self, path: &Path) {
        let record = self.record_mut(path);
        record.seen = record.admitted.clone();
        record.fallback = None;
        let loaded = record.current.is_some();
        self.show(path, |s| {
            s.error = None;
            s.error_kind = None;
            s.refused_sha256 = None;
            s.status = if loaded {
                FileState::Loaded
            } else {
                FileState::Unloaded
            };
        });
    }

    /// A generation that a stuck thread still holds: it stays mapped for good.
    pub fn pin(&mut self, library: &L, reason: String) {
        warn!(file = %library.file().display(), generation = library.generation(), reason, "library cannot be unloaded");
        self.not_unloaded.push(NotUnloaded {
            file: file_name(library.file()),
            plugin: library.info().name.clone(),
            generation: library.generation(),
            copy: library.copy().display().to_string(),
            reason,
        });
        self.board.put_not_unloaded(&self.not_unloaded);
    }

    /// Lists every generation still in memory and not yet listed in `not_unloaded`, with
    /// `reason` (at the end of a shutdown, when nothing more will let go of them).
    pub fn pin_held(&mut self, reason: &str) {
        let held: Vec<Arc<L>> = self.in_memory_all().cloned().collect();
        for library in held {
            let listed = self.not_unloaded.iter().any(|n| {
                n.generation == library.generation() && n.file == file_name(library.file())
            });
            if !listed {
                self.pin(&*library, reason.to_owned());
            }
        }
    }

    fn in_memory_all(&self) -> impl Iterator<Item = &Arc<L>> {
        self.files
            .values()
            .filter_map(|f| f.current.as_ref())
            .chain(&self.retired)
    }

    /// Unloads every generation that only this module holds (no instance uses it), but
    /// the current one of a plugin in `awaited` (a container of it waits to restart: its
    /// next instance is constructed from the generation in memory, not loaded again),
    /// unless its file is shown as `error` (a constructor failed on that content).
    pub fn sweep<P: Platform<Library = L>>(&mut self, platform: &mut P, awaited: &BTreeSet<&str>) {
        let paths: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, f)| {
                f.current
                    .as_ref()
                    .is_some_and(|l| Arc::strong_count(l) == 1)
                    && !(f.status.status != FileState::Error
                        && f.plugin.as_deref().is_some_and(|p| awaited.contains(p)))
            })
            .map(|(p, _)| p.clone())
            .collect();
        for path in paths {
            let Some(library) = self.record_mut(&path).current.take() else {
                continue;
            };
            self.unload(platform, library);
            self.show(&path, |s| {
                if s.status == FileState::Loaded {
                    // A container's constructor error shown on the file keeps it `error`.
                    s.status = if s.error_kind.is_some() {
                        FileState::Error
                    } else {
                        FileState::Unloaded
                    };
                }
            });
        }
        let (idle, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|l| Arc::strong_count(l) == 1);
        self.retired = held;
        for library in idle {
            self.unload(platform, library);
        }
    }

    /// Unloads a generation that never served (a duplicate, a file that changed plugin).
    pub fn discard<P: Platform<Library = L>>(&mut self, platform: &mut P, library: Arc<L>) {
        self.unload(platform, library);
    }

    fn unload<P: Platform<Library = L>>(&mut self, platform: &mut P, library: Arc<L>) {
        let facts = library.facts().clone();
        match platform.unload(library, self.closing.reports()) {
            Ok(()) => self.closing.started(facts),
            // Only if something outside this module holds it: keep it in sight.
            Err(held) => self.retired.push(held),
        }
    }

    /// A close reported back from its thread.
    pub fn closed(&mut self, closed: Unloaded) {
        match self.closing.finished(closed) {
            Verdict::Unloaded => {}
            Verdict::StaysMapped(entry) => {
                self.not_unloaded.push(entry);
                self.board.put_not_unloaded(&self.not_unloaded);
            }
            Verdict::LateButGone { file, generation } => {
                self.not_unloaded
                    .retain(|n| !(n.file == file && n.generation == generation));
                self.board.put_not_unloaded(&self.not_unloaded);
            }
        }
    }

    /// Lists the closes overdue at `now` as not unloaded.
    pub fn close_overdue(&mut self, now: tokio::time::Instant) {
        let overdue = self.closing.overdue(now);
        if !overdue.is_empty() {
            self.not_unloaded.extend(overdue);
            self.board.put_not_unloaded(&self.not_unloaded);
        }
    }

    /// When the first close in flight is overdue.
    pub fn next_close_due(&self) -> Option<tokio::time::Instant> {
        self.closing.next_deadline()
    }

    pub fn closing_done(&self) -> bool {
        self.closing.is_empty()
    }
}

/// The status of a file whose generation `library` is loaded.
pub fn loaded_status(file: String, library: &impl Generation) -> PluginStatus {
    PluginStatus {
        status: FileState::Loaded,
        name: Some(library.info().name.clone()),
        version: Some(library.info().version.clone()),
        interface_version: Some(library.info().interface.to_string()),
        generation: Some(library.generation()),
        sha256: Some(library.short_hash().to_owned()),
        loaded_at: Some(rfc3339(library.loaded_at())),
        ..PluginStatus::new(&file)
    }
}
