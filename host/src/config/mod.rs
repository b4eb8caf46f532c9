//! The host's TOML config file: host settings and one table per container instance.
//!
//! ```toml
//! [host]
//! plugin_dir = "plugins"          # relative to the config file
//! listen = "127.0.0.1:7070"
//! start_timeout_ms = 30000
//! stop_timeout_ms = 10000
//! shutdown_timeout_ms = 30000
//! health_interval_ms = 10000
//! health_timeout_ms = 2000
//! settle_ms = 1000
//! rescan_interval_ms = 10000
//! max_plugin_bytes = 536870912
//! strict_modes = true
//! api_header_timeout_ms = 10000
//! api_max_connections = 512
//! api_send_timeout_ms = 30000
//! sse_client_buffer_bytes = 65536
//!
//! [containers.web]
//! plugin = "http-echo"
//! config = { port = 8080 }
//! stop_timeout_ms = 5000
//! ```
//!
//! Unknown keys and bad values are errors that name the key and the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::model::Isolation;
use crate::restart::{Backoff, RestartPolicy};
use crate::sockets::Address;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

/// `host.max_plugin_bytes` by default: 512 MiB, far above any real plugin (a debug build
/// of an example plugin is a few MiB), far below what would strain the host's memory.
pub const DEFAULT_MAX_PLUGIN_BYTES: NonZeroU64 =
    NonZeroU64::new(512 * 1024 * 1024).expect("512 MiB is not zero");

/// `host.api_max_connections` by default, per listener: a few hundred clients at once is
/// far more than an operator's tools and a scraper need, and with the 256 descriptors kept
/// in reserve it fits the common soft limit of 1,024 open files.
pub const DEFAULT_API_MAX_CONNECTIONS: NonZeroU32 = NonZeroU32::new(512).expect("512 is not zero");

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub host: HostConfig,
    /// Container instances by name, in file order.
    #[serde(default)]
    pub containers: IndexMap<ContainerName, ContainerConfig>,
}

/// The `[host]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The plugin folder; a relative path is taken from the config file's folder.
    pub plugin_dir: Option<PathBuf>,
    /// Address of the HTTP API.
    pub listen: Option<SocketAddr>,
    /// Where private copies of loaded libraries go (default: the system temp folder).
    pub copy_dir: Option<PathBuf>,
    pub start_timeout_ms: Millis,
    pub stop_timeout_ms: Millis,
    pub shutdown_timeout_ms: Millis,
    pub health_interval_ms: Millis,
    pub health_timeout_ms: Millis,
    /// Opening a library, its pre-flight in a child process, and closing it.
    pub load_timeout_ms: Millis,
    /// How long a plugin file that is not yet a whole library must stay unchanged before
    /// it is reported as broken (a writer may still be at it).
    pub settle_ms: Millis,
    /// Period of the safety rescan of the plugin folder (events can be lost).
    pub rescan_interval_ms: Millis,
    /// Plugin files larger than this are refused without being read.
    pub max_plugin_bytes: NonZeroU64,
    /// Refuse plugin folders and files other users can write (like sshd's StrictModes).
    pub strict_modes: bool,
    /// A request's line and headers must arrive within this, else the connection is
    /// closed; an idle keep-alive connection is closed after it too.
    pub api_header_timeout_ms: Millis,
    /// Connections each API listener serves at once (lowered at start when the open-file
    /// limit cannot hold them beside the reserve: `limits.rs`).
    pub api_max_connections: NonZeroU32,
    /// A client that takes nothing of what the host sends it for this long (its buffers
    /// full) is disconnected.
    pub api_send_timeout_ms: Millis,
    /// The send buffer of one `/v1/events` stream: what a client that stops reading may
    /// leave unread in the host before its writes stall.
    pub sse_client_buffer_bytes: BufferBytes,
    /// Where containers' calls run unless their entry says: `"thread"` (in the host) or
    /// `"process"` (each instance in a child process of its own).
    pub isolation: Isolation,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            plugin_dir: None,
            listen: None,
            copy_dir: None,
            start_timeout_ms: Millis(30_000),
            stop_timeout_ms: Millis(10_000),
            shutdown_timeout_ms: Millis(30_000),
            health_interval_ms: Millis(10_000),
            health_timeout_ms: Millis(2_000),
            load_timeout_ms: Millis(10_000),
            settle_ms: Millis(1_000),
            rescan_interval_ms: Millis(10_000),
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            strict_modes: true,
            api_header_timeout_ms: Millis(10_000),
            api_max_connections: DEFAULT_API_MAX_CONNECTIONS,
            api_send_timeout_ms: Millis(30_000),
            sse_client_buffer_bytes: BufferBytes(64 * 1024),
            isolation: Isolation::Thread,
        }
    }
}

/// One `[containers.NAME]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The plugin's declared name (not its file name).
    pub plugin: String,
    /// Passed to the plugin's constructor, which deserializes it into its own type.
    #[serde(default)]
    pub config: toml::Table,
    pub start_timeout_ms: Option<Millis>,
    pub stop_timeout_ms: Option<Millis>,
    /// Containers that must be ready before this one starts (and that it stops before).
    /// When absent, the plugin's default (`requires:` in its export) applies.
    pub requires: Option<Vec<ContainerName>>,
    /// When to start it again after it ended.
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Liveness probe: failing it restarts the container (policy permitting).
    #[serde(default)]
    pub liveness: ProbeConfig,
    /// Readiness probe: failing it marks the container not ready and holds back its
    /// dependents.
    #[serde(default)]
    pub readiness: ProbeConfig,
    /// `"thread"` or `"process"`; the host's `isolation` when absent.
    pub isolation: Option<Isolation>,
    /// The address-space limit (`RLIMIT_AS`) of the container's process: process
    /// isolation only, at least [`MIN_MEMORY_MAX_BYTES`].
    pub memory_max_bytes: Option<NonZeroU64>,
    /// Listening sockets the host holds for the container, by the name the plugin asks
    /// its `Context` for.
    #[serde(default)]
    pub listen: BTreeMap<SocketName, Address>,
    /// How a hot reload replaces a running instance; by default `overlap` when the
    /// container has sockets in `listen`, else `stop-first`.
    pub reload: Option<ReloadMode>,
}

/// How a hot reload replaces a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadMode {
    /// Stop the old instance, then start the new one (a gap; sockets the plugin binds
    /// itself are free for the new one).
    StopFirst,
    /// Start the new instance beside the old one, and stop the old one only once the new
    /// one is ready (no gap; both must be able to run at once, as on host-held sockets).
    Overlap,
}

/// A held socket's name: 1 to 64 of `A-Z a-z 0-9 - _ .`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct SocketName(String);

impl TryFrom<String> for SocketName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        ContainerName::try_from(name)
            .map(|n| Self(n.0))
            .map_err(|e| e.replace("container name", "socket name"))
    }
}

impl SocketName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The smallest `memory_max_bytes`: the child's own runtime, the library and a few thread
/// stacks (address space, not resident memory) need about this much before the plugin
/// allocates anything.
pub const MIN_MEMORY_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `[containers.NAME.backoff]`: restart timing. Defaults as in `restart.rs`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub initial_ms: Option<Millis>,
    pub max_ms: Option<Millis>,
    pub jitter: Option<Fraction>,
    pub reset_after_ms: Option<Millis>,
    pub max_restarts: Option<u32>,
    pub window_ms: Option<Millis>,
    pub quarantine_retry_ms: Option<Millis>,
}

impl BackoffConfig {
    pub fn resolve(&self) -> Backoff {
        let d = Backoff::default();
        let ms = |v: Option<Millis>, default| v.map_or(default, Millis::duration);
        Backoff {
            initial: ms(self.initial_ms, d.initial),
            max: ms(self.max_ms, d.max),
            jitter: self.jitter.map_or(d.jitter, |f| f.0),
            reset_after: ms(self.reset_after_ms, d.reset_after),
            max_restarts: self.max_restarts.unwrap_or(d.max_restarts),
            window: ms(self.window_ms, d.window),
            quarantine_retry: ms(self.quarantine_retry_ms, d.quarantine_retry),
        }
    }
}

/// `[containers.NAME.liveness]` or `.readiness`: every key optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Turn the probe off.
    pub disabled: bool,
    pub period_ms: Option<Millis>,
    pub timeout_ms: Option<Millis>,
    /// Consecutive failures that count as failed.
    pub failure_threshold: Option<u32>,
    /// After a start, failures within this window do not count (liveness).
    pub grace_ms: Option<u64>,
}

/// A number from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Fraction(pub f64);

impl TryFrom<f64> for Fraction {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("{value} is not between 0 and 1"))
        }
    }
}

/// A duration in milliseconds; must be positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct Millis(u64);

impl TryFrom<u64> for Millis {
    type Error = String;
    fn try_from(ms: u64) -> Result<Self, String> {
        if ms == 0 {
            Err("must be a positive number of milliseconds".into())
        } else {
            Ok(Self(ms))
        }
    }
}

impl Millis {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// A socket buffer size in bytes, from 4 KiB to 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct BufferBytes(usize);

impl BufferBytes {
    pub const MIN: u64 = 4 * 1024;
    pub const MAX: u64 = 16 * 1024 * 1024;

    pub fn get(self) -> usize {
        self.0
    }
}

impl TryFrom<u64> for BufferBytes {
    type Error = String;
    fn try_from(bytes: u64) -> Result<Self, String> {
        match usize::try_from(bytes) {
            Ok(size) if (Self::MIN..=Self::MAX).contains(&bytes) => Ok(Self(size)),
            _ => Err(format!(
                "{bytes} bytes is not a buffer size from {} (4 KiB) to {} (16 MiB)",
                Self::MIN,
                Self::MAX
            )),
        }
    }
}

/// A container name: 1 to 64 of `A-Z a-z 0-9 - _ .`, so it is safe in URLs, logs and
/// file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ContainerName(String);

impl TryFrom<String> for ContainerName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Self(name))
        } else {
            Err(format!(
                "invalid container name {name:?}: use 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'"
            ))
        }
    }
}

impl ContainerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContainerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        })?;
        if let Some(dir) = &config.host.plugin_dir {
            if dir.is_relative() {
                let base = file.parent().unwrap_or(Path::new("."));
                config.host.plugin_dir = Some(base.join(dir));
            }
        }
        Ok(config)
    }

    /// Parses config text; the error names the line, column and key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        config.check_requires()?;
        config.check_confinement()?;
        config.check_listen()?;
        Ok(config)
    }

    /// A memory limit only where the container runs in a process of its own, and one it
    /// can start under.
    fn check_confinement(&self) -> Result<(), String> {
        for (name, container) in &self.containers {
            let Some(limit) = container.memory_max_bytes else {
                continue;
            };
            if container.isolation.unwrap_or(self.host.isolation) != Isolation::Process {
                return Err(format!(
                    "containers.{name}.memory_max_bytes: a memory limit needs \
                     isolation = \"process\" (a container in the host's process shares its memory)"
                ));
            }
            if limit.get() < MIN_MEMORY_MAX_BYTES {
                return Err(format!(
                    "containers.{name}.memory_max_bytes: {limit} is below the minimum of \
                     {MIN_MEMORY_MAX_BYTES} (64 MiB) a container's process needs to start"
                ));
            }
        }
        Ok(())
    }

    /// No two sockets at one address.
    fn check_listen(&self) -> Result<(), String> {
        let mut seen: BTreeMap<&Address, String> = BTreeMap::new();
        for (name, container) in &self.containers {
            for (socket, address) in &container.listen {
                let key = format!("containers.{name}.listen.{}", socket.as_str());
                if let Some(other) = seen.insert(address, key.clone()) {
                    return Err(format!("{key}: {address} is also {other}"));
                }
            }
        }
        Ok(())
    }

    /// Every `requires` names a declared container, and there is no cycle.
    fn check_requires(&self) -> Result<(), String> {
        for (name, container) in &self.containers {
            for required in container.requires.iter().flatten() {
                if !self.containers.contains_key(required) {
                    return Err(format!(
                        "containers.{name}.requires: `{required}` is not a container declared in this file"
                    ));
                }
                if required == name {
                    return Err(format!(
                        "containers.{name}.requires: a container cannot require itself"
                    ));
                }
            }
        }
        // Depth-first search for a cycle, reporting its path.
        fn visit<'a>(
            config: &'a Config,
            name: &'a ContainerName,
            path: &mut Vec<&'a ContainerName>,
            done: &mut std::collections::HashSet<&'a ContainerName>,
        ) -> Result<(), String> {
            if let Some(at) = path.iter().position(|n| *n == name) {
                let cycle: Vec<&str> = path[at..]
                    .iter()
                    .chain([&name])
                    .map(|n| n.as_str())
                    .collect();
                return Err(format!("dependency cycle: {}", cycle.join(" -> ")));
            }
            if done.contains(name) {
                return Ok(());
            }
            path.push(name);
            for required in config.containers[name].requires.iter().flatten() {
                visit(config, required, path, done)?;
            }
            path.pop();
            done.insert(name);
            Ok(())
        }
        let mut done = std::collections::HashSet::new();
        for name in self.containers.keys() {
            visit(self, name, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}

impl ContainerConfig {
    /// The plugin config as the JSON text the plugin's constructor receives.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
}

mod json;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
