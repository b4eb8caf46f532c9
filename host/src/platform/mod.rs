//! What the supervisor needs from the world, behind traits: the plugin folder (list, stamp,
//! look at a file), library generations (load, check a config, unload) and the worker that
//! makes every call into one container instance.
//!
//! [`Real`] is the world: the file system, `loader::Loader` and `loader::Worker`. The
//! supervisor's deterministic simulation (`supervisor/sim/`) plugs in a fake one, so every
//! decision the supervisor makes is tested under seeded random orders of events.

mod look;
mod real;

pub use look::{LookRules, is_candidate, list_candidates, look};
pub use real::Real;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use crate::loader::{
    CallError, ConfigCheck, HealthReport, LibraryFacts, LoadError, PluginInfo, UnloadReport,
};
use crate::model::Isolation;
use crate::services::{Handover, HostServices};
use crate::sockets::Listeners;
use crate::watcher::FolderEvent;

/// The file name of a path, for logs and the API.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What cheaply tells that a file changed: size, modification time, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub inode: u64,
}

/// Why a plugin file cannot be used, as the API's `error_kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// It could not be read (or a symlink not resolved).
    Io,
    /// A folder, socket, device...
    NotAFile,
    /// Writable by others, or a symlink leading out of the folder.
    Untrusted,
    /// Larger than `host.max_plugin_bytes`.
    TooLarge,
    /// The loader refused it (`LoadError::kind`).
    Load(&'static str),
    /// Another file already provides its plugin.
    DuplicatePlugin,
    /// It loaded, but its containers did not start: the previous generation runs again.
    RolledBack,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::NotAFile => "not_a_file",
            Self::Untrusted => "untrusted",
            Self::TooLarge => "too_large",
            Self::Load(kind) => kind,
            Self::DuplicatePlugin => "duplicate_plugin",
            Self::RolledBack => "rolled_back",
        }
    }
}

/// What looking at one name in the plugin folder found: facts about the file only. What
/// they mean given what the host already has is decided by `supervisor/admission.rs`.
#[derive(Debug)]
pub enum Observation {
    Gone,
    /// It cannot be used; `key` identifies the condition, so it is reported once.
    Unusable {
        problem: Problem,
        message: String,
        key: String,
    },
    /// It changed while being read: look again once it is quiet.
    Changing,
    /// Its whole content.
    Content(Content),
}

/// A file's content as read once: everything later (hash, checks, the private copy) comes
/// from these bytes, so the file cannot change in between.
#[derive(Debug, Clone)]
pub struct Content {
    pub bytes: Arc<Vec<u8>>,
    /// Hex SHA-256 of `bytes`.
    pub hash: String,
    pub stamp: Stamp,
}

/// Where one container's calls run, and the limits of its process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confinement {
    pub isolation: Isolation,
    /// `RLIMIT_AS` of the container's process (process isolation only).
    pub memory_max_bytes: Option<u64>,
}

/// A generation's close, reported by the thread that did it.
#[derive(Debug)]
pub struct Unloaded {
    pub facts: LibraryFacts,
    pub report: UnloadReport,
    pub took: Duration,
}

/// One loaded generation of a plugin file: the facts of it the supervisor uses.
pub trait Generation: Send + Sync + 'static {
    fn facts(&self) -> &LibraryFacts;

    fn info(&self) -> &PluginInfo {
        &self.facts().info
    }
    /// The plugin file in the watched folder.
    fn file(&self) -> &Path {
        &self.facts().file
    }
    /// The private copy that is mapped.
    fn copy(&self) -> &Path {
        &self.facts().copy
    }
    fn generation(&self) -> u64 {
        self.facts().generation
    }
    fn sha256(&self) -> &str {
        &self.facts().sha256
    }
    fn loaded_at(&self) -> SystemTime {
        self.facts().loaded_at
    }
    /// Containers an instance requires unless its config says otherwise.
    fn default_requires(&self) -> &[String] {
        &self.facts().default_requires
    }
    /// The first 12 hex digits of the content hash.
    fn short_hash(&self) -> &str {
        self.facts().short_hash()
    }
}

/// The thread that makes every call into one container instance, each with a timeout. A
/// call that overruns leaves the worker stuck: it is abandoned with its generation.
pub trait Calls: Send + Sync + 'static {
    type Library: Generation;

    fn library(&self) -> &Arc<Self::Library>;
    /// The process the calls run in, when it is not the host's (process isolation).
    fn pid(&self) -> Option<u32> {
        None
    }
    /// Whether its process ended on its own: no call can reach it any more.
    fn has_ended(&self) -> bool {
        false
    }
    fn construct(
        &self,
        name: &str,
        config_json: String,
        services: &HostServices,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
    fn start(&self, timeout: Duration) -> impl Future<Output = Result<(), CallError>> + Send;
    fn stop(&self, timeout: Duration) -> impl Future<Output = Result<(), CallError>> + Send;
    fn health(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<HealthReport, CallError>> + Send;
    /// `None` when the plugin has no readiness check (interface 1.0).
    fn ready(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<HealthReport>, CallError>> + Send;
    /// The state the instance hands the next on a hot reload, if any.
    fn handover(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Handover>, CallError>> + Send;
    /// Drops the plugin's value.
    fn dispose(&self, timeout: Duration) -> impl Future<Output = Result<(), CallError>> + Send;
    /// No call will follow those already made: a thread may end once it has run them,
    /// before [`Calls::finish`] asks it to.
    fn no_more_calls(&self) {}
    /// Ends and joins the thread; fails (abandoning it) if it is stuck or does not end.
    fn finish(self, timeout: Duration) -> impl Future<Output = Result<(), CallError>> + Send;
}

/// The world the supervisor acts on.
pub trait Platform: Send + 'static {
    type Library: Generation;
    type Worker: Calls<Library = Self::Library>;

    /// Starts watching `dir`, sending events to `events`; replaces an earlier watch.
    fn watch(&mut self, dir: &Path, events: UnboundedSender<FolderEvent>) -> Result<(), String>;
    fn unwatch(&mut self);
    /// The folder's identity (device, inode), following a symlink: tells that it was
    /// replaced or that it is gone.
    fn identity(&self, dir: &Path) -> std::io::Result<(u64, u64)>;
    /// The plugin candidates in `dir`, sorted.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
    fn stamp(&self, path: &Path) -> Option<Stamp>;
    /// Looks at one name: metadata, symlink and trust rules, size limit, content.
    fn look(&self, path: &Path, rules: &LookRules) -> Observation;
    /// The content of a loaded generation, from its private copy.
    fn read_copy(&self, library: &Self::Library) -> std::io::Result<Vec<u8>>;
    /// Checks and opens `content` as a new generation of `path`.
    fn load(
        &mut self,
        path: &Path,
        content: &Content,
    ) -> impl Future<Output = Result<Arc<Self::Library>, LoadError>> + Send;
    /// Closes a generation nothing else holds, on a thread of its own (its finalizers run
    /// then and may hang); the outcome is sent on `done`. Gives the generation back if
    /// something still holds it.
    fn unload(
        &mut self,
        library: Arc<Self::Library>,
        done: UnboundedSender<Unloaded>,
    ) -> Result<(), Arc<Self::Library>>;
    /// Asks the plugin whether its config type accepts `config_json`, constructing nothing.
    fn check_config(
        &self,
        library: &Arc<Self::Library>,
        config_json: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<ConfigCheck, CallError>> + Send;
    /// Starts the worker of container `name` on `library`: a thread of the host, or a
    /// child process (which gets the container's held `listeners`), as `confinement` says.
    fn spawn(
        &self,
        name: &str,
        library: Arc<Self::Library>,
        confinement: &Confinement,
        listeners: &Listeners,
    ) -> std::io::Result<Self::Worker>;
}
