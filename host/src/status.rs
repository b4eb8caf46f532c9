//! The status board: what the host reports about its containers and plugin files.
//!
//! The supervisor writes it; the HTTP API reads snapshots of it. It holds plain data only,
//! never a handle into a plugin.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use serde::Serialize;

/// A container's lifecycle state, reported as a lowercase string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for the containers it requires to be ready (see `last_error`).
    Waiting,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Failed; restarts at `next_retry`.
    Backoff,
    /// Failed too often; tried again at `next_retry`, or by a manual restart.
    Quarantined,
}

/// Formats a time as RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The last health check of a container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthStatus {
    pub healthy: bool,
    pub message: String,
    pub checked_at: String,
    pub duration_ms: f64,
}

/// One container, as `GET /v1/containers` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub plugin: String,
    /// The plugin's version, once a library for it was loaded.
    pub version: Option<String>,
    pub state: State,
    pub since: String,
    pub last_error: Option<String>,
    /// Generation of the library the current (or last) instance came from.
    pub generation: Option<u64>,
    /// File name of that library in the plugin folder.
    pub file: Option<String>,
    pub loaded_at: Option<String>,
    /// First 12 hex digits of the library's SHA-256.
    pub sha256: Option<String>,
    /// The last liveness probe, or null before the first.
    pub health: Option<HealthStatus>,
    /// Running and ready (dependents may start).
    pub ready: bool,
    /// Restarts since the counters were last reset.
    pub restarts: u32,
    /// When a container in backoff or quarantine is tried again.
    pub next_retry: Option<String>,
    pub requires: Vec<String>,
    /// The last ten probe results, oldest first (in the one-container view only: the list
    /// stays small and fast).
    #[serde(skip)]
    pub probes: Vec<crate::probes::ProbeRecord>,
    /// The last 20 state transitions, oldest first (in the one-container view only).
    #[serde(skip)]
    pub history: Vec<Transition>,
}

impl ContainerStatus {
    /// A container just registered: stopped since now, nothing loaded, nothing probed.
    pub fn registered(name: &str, plugin: &str, requires: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            plugin: plugin.to_owned(),
            version: None,
            state: State::Stopped,
            since: rfc3339(SystemTime::now()),
            last_error: None,
            generation: None,
            file: None,
            loaded_at: None,
            sha256: None,
            health: None,
            ready: false,
            restarts: 0,
            next_retry: None,
            requires,
            probes: Vec::new(),
            history: Vec::new(),
        }
    }
}

/// `GET /v1/containers/{name}`: the status with its probe results and history.
#[derive(Debug, Serialize)]
pub struct ContainerDetail<'a> {
    #[serde(flatten)]
    pub status: &'a ContainerStatus,
    pub probes: &'a [crate::probes::ProbeRecord],
    pub history: &'a [Transition],
}

/// Load state of a plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Being read, checked and opened (or waiting to be a whole file).
    Loading,
    /// A generation of it is in memory.
    Loaded,
    /// A valid plugin with no live container: not in memory.
    Unloaded,
    /// It could not be loaded (see `error`).
    Error,
    /// Its containers are being stopped and its library unloaded.
    Unloading,
}

/// One plugin file, as `GET /v1/plugins` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginStatus {
    pub file: String,
    pub status: FileState,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub interface_version: Option<String>,
    pub generation: Option<u64>,
    pub sha256: Option<String>,
    pub loaded_at: Option<String>,
}

/// A library generation the host could not unload, kept for the operator to see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotUnloaded {
    pub file: String,
    pub plugin: String,
    pub generation: u64,
    pub copy: String,
    pub reason: String,
}

/// Everything the board holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub containers: Vec<ContainerStatus>,
    pub plugins: Vec<PluginStatus>,
    pub not_unloaded: Vec<NotUnloaded>,
}

/// One state transition of a container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub at: String,
    pub from: State,
    pub to: State,
    pub reason: Option<String>,
}

/// How many transitions a container's status keeps.
pub const HISTORY: usize = 20;

/// Shared, cheaply cloned handle to the status board, the event log and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Board {
    inner: Arc<RwLock<Snapshot>>,
    pub events: Arc<crate::events::EventLog>,
    /// Set once the first scan loaded, registered and started everything.
    started: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by every write, so readers can tell a cached rendering is still current.
    version: Arc<std::sync::atomic::AtomicU64>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Board {
    /// Marks the initial start as done.
    pub fn set_started(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the initial start is done.
    pub fn is_started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Snapshot> {
        let guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        guard
    }

    /// Reads the snapshot with its version (the number of writes so far): the same version
    /// means the same content.
    pub fn read_versioned(&self) -> (u64, RwLockReadGuard<'_, Snapshot>) {
        let guard = self.read();
        (
            self.version.load(std::sync::atomic::Ordering::SeqCst),
            guard,
        )
    }

    /// Applies `f` to the named container's status, if it exists.
    pub fn update_container(&self, name: &str, f: impl FnOnce(&mut ContainerStatus)) {
        if let Some(status) = self.write().containers.iter_mut().find(|c| c.name == name) {
            f(status);
        }
    }

    pub fn container(&self, name: &str) -> Option<ContainerStatus> {
        self.read()
            .containers
            .iter()
            .find(|c| c.name == name)
            .cloned()
    }

    /// Inserts or replaces the status of a plugin file, keeping the list sorted by file.
    pub fn set_plugin(&self, status: PluginStatus) {
        let mut snapshot = self.write();
        match snapshot
            .plugins
            .binary_search_by(|p| p.file.cmp(&status.file))
        {
            Ok(at) => snapshot.plugins[at] = status,
            Err(at) => snapshot.plugins.insert(at, status),
        }
    }

    pub fn update_plugin(&self, file: &str, f: impl FnOnce(&mut PluginStatus)) {
        if let Some(status) = self.write().plugins.iter_mut().find(|p| p.file == file) {
            f(status);
        }
    }
}
