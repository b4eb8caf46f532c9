//! Config reload (SIGHUP, `POST /v1/reload`, `balut ctl reload`): the whole new file is
//! parsed and validated first, and a bad one is refused with the old one still in force. A
//! good one is applied as a diff: containers whose settings changed are restarted with the
//! new ones, new ones are added, removed ones stopped and forgotten; the rest are not
//! touched.

use std::collections::BTreeSet;

use serde::Serialize;
use tracing::{info, warn};

use super::Supervisor;
use crate::config::{Config, ContainerConfig};

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that only take effect when balut restarts.
    pub needs_restart: Vec<String>,
}

/// Why a reload was refused (the old config stays in force).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: balut was started without --config")]
    NoConfigFile,
    #[error("{0}; the old config stays in force")]
    Invalid(String),
}

impl Supervisor {
    /// Reads the config file again and applies the difference.
    pub(super) async fn reload_config(&mut self) -> Result<ReloadReport, ReloadError> {
        let path = self
            .settings
            .config_path
            .clone()
            .ok_or(ReloadError::NoConfigFile)?;
        let new = Config::load(&path).map_err(|e| {
            let error = ReloadError::Invalid(e.to_string());
            // One log record, one line: the parse error's snippet lines are joined.
            let one_line = error
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            warn!(error = %one_line, "config reload refused");
            error
        })?;
        let report = self.apply_config(new).await;
        info!(
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            needs_restart = ?report.needs_restart,
            "config reloaded"
        );
        Ok(report)
    }

    async fn apply_config(&mut self, new: Config) -> ReloadReport {
        let old = std::mem::replace(&mut self.settings.config, new.clone());
        let mut report = ReloadReport::default();

        // Host settings: the ones the running host can take now, and the rest reported.
        let (old_host, new_host) = (&old.host, &new.host);
        for (key, differs) in [
            ("host.listen", old_host.listen != new_host.listen),
            (
                "host.plugin_dir",
                old_host.plugin_dir != new_host.plugin_dir,
            ),
            ("host.copy_dir", old_host.copy_dir != new_host.copy_dir),
            (
                "host.strict_modes",
                old_host.strict_modes != new_host.strict_modes,
            ),
            (
                "host.load_timeout_ms",
                old_host.load_timeout_ms != new_host.load_timeout_ms,
            ),
            (
                "host.rescan_interval_ms",
                old_host.rescan_interval_ms != new_host.rescan_interval_ms,
            ),
        ] {
            if differs {
                warn!(
                    key,
                    "changed in the config file; takes effect when balut restarts"
                );
                report.needs_restart.push(key.to_owned());
            }
        }
        let keep = self.host.clone();
        self.host = crate::config::HostConfig {
            plugin_dir: keep.plugin_dir,
            listen: keep.listen,
            copy_dir: keep.copy_dir,
            strict_modes: keep.strict_modes,
            load_timeout_ms: keep.load_timeout_ms,
            rescan_interval_ms: keep.rescan_interval_ms,
            ..new.host.clone()
        };
        let host_changed = old.host.start_timeout_ms != new.host.start_timeout_ms
            || old.host.stop_timeout_ms != new.host.stop_timeout_ms
            || old.host.health_interval_ms != new.host.health_interval_ms
            || old.host.health_timeout_ms != new.host.health_timeout_ms;

        // Containers the old config declared.
        let names: BTreeSet<String> = old
            .containers
            .keys()
            .chain(new.containers.keys())
            .map(|n| n.as_str().to_owned())
            .collect();
        let find = |config: &Config, name: &str| -> Option<ContainerConfig> {
            config
                .containers
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, c)| c.clone())
        };
        let mut to_forget = Vec::new();
        for name in &names {
            match (find(&old, name), find(&new, name)) {
                (Some(_), None) => {
                    report.removed.push(name.clone());
                    to_forget.push(name.clone());
                }
                (None, Some(_)) => report.added.push(name.clone()),
                (Some(a), Some(b)) if a != b || host_changed => {
                    report.changed.push(name.clone());
                    to_forget.push(name.clone());
                }
                _ => report.unchanged.push(name.clone()),
            }
        }
        // Default instances (named after their plugin) that the new config replaces or
        // that now clash with a configured name.
        for container in &self.containers {
            if container.configured {
                continue;
            }
            let replaced = new
                .containers
                .iter()
                .any(|(n, c)| c.plugin == container.plugin || n.as_str() == container.name);
            if replaced || host_changed {
                to_forget.push(container.name.clone());
            }
        }

        // Stop what goes (dependents first), then forget it.
        let indices = to_forget.iter().filter_map(|n| self.index_of(n)).collect();
        for index in self.stop_order(indices) {
            let name = self.containers[index].name.clone();
            let timeout = self.containers[index].stop_timeout;
            // A failed stop is logged and shown; the container is replaced all the same.
            let _ = self.stop_container(index, timeout).await;
            if let Some(index) = self.index_of(&name) {
                self.deregister(index);
            }
        }

        // Register what the new config wants, for every plugin in the folder, then the
        // containers whose plugin is missing. `converge` starts them.
        let plugins: Vec<String> = self.providers.keys().cloned().collect();
        for plugin in plugins {
            self.ensure_registered(&plugin);
        }
        self.register_missing();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_the_old_config_stays() {
        let e = ReloadError::Invalid("x.toml: TOML parse error at line 2".into());
        assert_eq!(
            e.to_string(),
            "x.toml: TOML parse error at line 2; the old config stays in force"
        );
    }
}
