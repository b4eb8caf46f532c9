//! Plain data the host reports: container and plugin-file states, probe results, state
//! transitions. A leaf module: it imports nothing of the host, so the board, the event log,
//! the metrics and the probes can all use it without importing each other.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Where a container's calls run: on a thread of the host (microsecond calls; a crash in
/// plugin code ends the host), or in a child process of its own (a crash ends only it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Thread,
    Process,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Thread => "thread",
            Self::Process => "process",
        }
    }
}

/// A live isolated instance's process and what it uses, read from `/proc` when shown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessFigures {
    pub pid: u32,
    /// Resident memory.
    pub rss_bytes: u64,
    /// User and system CPU time since the process started.
    pub cpu_seconds: f64,
}

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

impl State {
    /// The state's name, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Backoff => "backoff",
            Self::Quarantined => "quarantined",
        }
    }
}

/// Formats a time as RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A duration in milliseconds, rounded to whole microseconds: `0.301`, never
/// `0.30100000000000005` (the division of whole microseconds by 1000 is the float closest
/// to the decimal, which serializes as its shortest form).
pub fn millis(duration: std::time::Duration) -> f64 {
    // u64 microseconds cover 584,000 years; f64 holds them exactly up to 2^53 µs (285 years).
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    micros as f64 / 1000.0
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
    /// Where its calls run.
    pub isolation: Isolation,
    /// The child process of a live isolated instance (figures filled in when shown).
    pub process: Option<ProcessFigures>,
    /// The last ten probe results, oldest first (in the one-container view only: the list
    /// stays small and fast).
    #[serde(skip)]
    pub probes: Vec<ProbeRecord>,
    /// The last 20 state transitions, oldest first (in the one-container view only).
    #[serde(skip)]
    pub history: Vec<Transition>,
    /// Its entry in the config file as resolved (`ContainerConfig` as JSON), or `None`
    /// for a plugin's default instance (in the one-container view only).
    #[serde(skip)]
    pub config: Option<std::sync::Arc<serde_json::Value>>,
}

impl ContainerStatus {
    /// A container just registered: stopped since now, nothing loaded, nothing probed.
    pub fn registered(
        name: &str,
        plugin: &str,
        requires: Vec<String>,
        isolation: Isolation,
    ) -> Self {
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
            isolation,
            process: None,
            probes: Vec::new(),
            history: Vec::new(),
            config: None,
        }
    }
}

/// `GET /v1/containers/{name}`: the status with its probe results and history.
#[derive(Debug, Serialize)]
pub struct ContainerDetail<'a> {
    #[serde(flatten)]
    pub status: &'a ContainerStatus,
    pub probes: &'a [ProbeRecord],
    pub history: &'a [Transition],
    /// Its config file entry, or null.
    pub config: Option<&'a serde_json::Value>,
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
    /// First 12 hex digits of content in the folder that was refused (a rollback, or a
    /// broken replacement) while the generation `sha256` names keeps serving the file.
    pub refused_sha256: Option<String>,
}

impl PluginStatus {
    /// A file the host knows nothing about yet.
    pub fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            status: FileState::Loading,
            error: None,
            error_kind: None,
            name: None,
            version: None,
            interface_version: None,
            generation: None,
            sha256: None,
            loaded_at: None,
            refused_sha256: None,
        }
    }
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
    pub folder: FolderStatus,
}

/// The plugin folder as the host sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolderStatus {
    pub path: String,
    /// Changes are seen at once (a file-system watch is armed); otherwise only by rescans.
    pub watching: bool,
    /// Why the folder cannot be read or watched (it was removed, renamed away...).
    pub error: Option<String>,
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
/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Liveness,
    Readiness,
}

/// One probe's result, as the status shows the last ten.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeRecord {
    pub probe: ProbeKind,
    pub at: String,
    pub ok: bool,
    pub message: String,
    pub duration_ms: f64,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_in_milliseconds_have_no_float_noise() {
        for (micros, shown) in [
            (300, "0.3"),
            (301, "0.301"),
            (1, "0.001"),
            (12_345_678, "12345.678"),
        ] {
            let ms = super::millis(Duration::from_nanos(micros * 1000 + 999));
            assert_eq!(serde_json::to_string(&ms).ok().as_deref(), Some(shown));
        }
        let noisy = 0.1 + 0.2;
        assert_ne!(serde_json::to_string(&noisy).ok().as_deref(), Some("0.3"));
    }
}
