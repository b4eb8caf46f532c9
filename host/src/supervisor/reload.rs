//! Config reload (SIGHUP, `POST /v1/reload`, `balut ctl reload`). The whole new file is
//! parsed and validated, then [`diff`] turns the old and the new config into a [`Plan`]
//! (a pure function), then every added or changed container's config is checked by its
//! plugin's own config type; only if all pass is anything applied. A refused file leaves
//! the old config in force and nothing disturbed. Applying stops and forgets what goes
//! (dependents first), registers what comes; the supervisor's next turn starts it.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::Supervisor;
use super::handle::{ReloadError, ReloadReport};
use super::lifecycle::config_key_error;
use crate::config::{Config, ContainerConfig, HostConfig};
use crate::loader::ConfigCheck;
use crate::platform::Platform;

/// A registered container, as the diff sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub plugin: String,
    pub configured: bool,
}

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub report: ReloadReport,
    /// Registered containers to stop and forget: removed, changed, and default instances
    /// the new config replaces.
    pub forget: Vec<String>,
    /// Containers of the new config whose config their plugin must accept first.
    pub check: Vec<String>,
    /// The host settings in force afterwards (those that need a restart keep theirs).
    pub host: HostConfig,
}

/// Host settings that take effect only when balut restarts.
fn restart_only(old: &HostConfig, new: &HostConfig) -> Vec<String> {
    [
        ("host.listen", old.listen != new.listen),
        ("host.plugin_dir", old.plugin_dir != new.plugin_dir),
        ("host.copy_dir", old.copy_dir != new.copy_dir),
        ("host.strict_modes", old.strict_modes != new.strict_modes),
        (
            "host.load_timeout_ms",
            old.load_timeout_ms != new.load_timeout_ms,
        ),
        (
            "host.rescan_interval_ms",
            old.rescan_interval_ms != new.rescan_interval_ms,
        ),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(key, _)| key.to_owned())
    .collect()
}

/// What going from `old` to `new` means for the `registered` containers; `running` are
/// the host settings in force.
pub fn diff(old: &Config, new: &Config, running: &HostConfig, registered: &[Registered]) -> Plan {
    let mut report = ReloadReport {
        needs_restart: restart_only(&old.host, &new.host),
        ..ReloadReport::default()
    };
    let host = HostConfig {
        plugin_dir: running.plugin_dir.clone(),
        listen: running.listen,
        copy_dir: running.copy_dir.clone(),
        strict_modes: running.strict_modes,
        load_timeout_ms: running.load_timeout_ms,
        rescan_interval_ms: running.rescan_interval_ms,
        ..new.host.clone()
    };
    // Settings every container's spec is resolved from.
    let host_changed = old.host.start_timeout_ms != new.host.start_timeout_ms
        || old.host.stop_timeout_ms != new.host.stop_timeout_ms
        || old.host.health_interval_ms != new.host.health_interval_ms
        || old.host.health_timeout_ms != new.host.health_timeout_ms
        || old.host.isolation != new.host.isolation;
    let find = |config: &Config, name: &str| -> Option<ContainerConfig> {
        config
            .containers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, c)| c.clone())
    };
    let names: BTreeSet<&str> = old
        .containers
        .keys()
        .chain(new.containers.keys())
        .map(|n| n.as_str())
        .collect();
    let is_registered = |name: &str| registered.iter().any(|r| r.name == name);
    let mut forget = Vec::new();
    let mut check = Vec::new();
    for name in names {
        match (find(old, name), find(new, name)) {
            (Some(_), None) => {
                report.removed.push(name.to_owned());
                forget.push(name.to_owned());
            }
            (None, Some(_)) => {
                report.added.push(name.to_owned());
                check.push(name.to_owned());
            }
            (Some(a), Some(b)) if a != b || host_changed => {
                report.changed.push(name.to_owned());
                forget.push(name.to_owned());
                check.push(name.to_owned());
            }
            _ => report.unchanged.push(name.to_owned()),
        }
    }
    // Default instances (named after their plugin) that the new config replaces or that
    // now clash with a configured name.
    for r in registered.iter().filter(|r| !r.configured) {
        let replaced = new
            .containers
            .iter()
            .any(|(n, c)| c.plugin == r.plugin || n.as_str() == r.name);
        if (replaced || host_changed) && !forget.contains(&r.name) {
            forget.push(r.name.clone());
        }
    }
    forget.retain(|name| is_registered(name));
    Plan {
        report,
        forget,
        check,
        host,
    }
}

impl<P: Platform> Supervisor<P> {
    /// Reads the config file again and applies the difference.
    pub(super) async fn reload_config(&mut self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload().await;
        match &result {
            // One log record, one line: a parse error's snippet lines are joined.
            Err(error) => {
                let one_line = error
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                warn!(error = %one_line, "config reload refused");
            }
            Ok(report) => info!(
                added = ?report.added,
                removed = ?report.removed,
                changed = ?report.changed,
                needs_restart = ?report.needs_restart,
                "config reloaded"
            ),
        }
        result
    }

    async fn try_reload(&mut self) -> Result<ReloadReport, ReloadError> {
        let path = self
            .settings
            .config_path
            .clone()
            .ok_or(ReloadError::NoConfigFile)?;
        let new = Config::load(&path).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        self.apply_config(new).await
    }

    pub(super) async fn apply_config(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let registered: Vec<Registered> = self
            .containers
            .iter()
            .map(|c| Registered {
                name: c.name.clone(),
                plugin: c.plugin.clone(),
                configured: c.spec.configured,
            })
            .collect();
        let plan = diff(&self.settings.config, &new, &self.host, &registered);
        for key in &plan.report.needs_restart {
            warn!(
                key,
                "changed in the config file; takes effect when balut restarts"
            );
        }
        let refused = self.check_configs(&new, &plan.check).await;
        if !refused.is_empty() {
            return Err(ReloadError::ConfigRefused(refused));
        }
        // A shutdown asked for meanwhile cancels a reload not applied yet.
        if self.shared.stop_requested_at().is_some() {
            return Err(ReloadError::Unavailable(
                "the host is shutting down; the reload was not applied".into(),
            ));
        }
        self.settings.config = new;
        self.host = plan.host;
        for name in self.containers.stop_order(&plan.forget) {
            if self.shared.stop_requested_at().is_some() {
                break; // The shutdown stops the rest, in its own order.
            }
            self.stop_dependents(&name, "is being replaced").await;
            // A failed stop is logged and shown; the container is replaced all the same.
            let _ = self.stop_container(&name).await;
            self.containers.deregister(&name);
            info!(container = %name, "container deregistered");
        }
        for plugin in self.files.plugins() {
            self.ensure_registered(&plugin);
        }
        self.register_missing();
        Ok(plan.report)
    }

    /// Asks each named container's plugin whether it accepts its config in `new`.
    /// Returns the refusals, each naming its key path.
    async fn check_configs(&mut self, new: &Config, names: &[String]) -> Vec<String> {
        let mut refused = Vec::new();
        for (name, config) in &new.containers {
            if !names.iter().any(|n| n == name.as_str())
                || self.files.provider(&config.plugin).is_none()
            {
                continue;
            }
            // A plugin not in memory is loaded for the check (and unloaded after it).
            let Ok(library) = self.library_for(&config.plugin).await else {
                continue; // A broken file: its containers fail on start, with the reason.
            };
            let timeout = config
                .start_timeout_ms
                .unwrap_or(new.host.start_timeout_ms)
                .duration();
            let json = config.config_json();
            match self.platform.check_config(&library, &json, timeout).await {
                Ok(ConfigCheck::Refused { path, message }) => {
                    refused.push(config_key_error(name.as_str(), &path, &message));
                }
                Ok(ConfigCheck::Accepted | ConfigCheck::Unsupported) => {}
                Err(e) => refused.push(format!(
                    "containers.{name}.config: the plugin's config check failed: {e}"
                )),
            }
        }
        refused
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
        let e = ReloadError::ConfigRefused(vec![
            "containers.kv.config.maxkeys: unknown field `maxkeys`".into(),
        ]);
        assert_eq!(
            e.to_string(),
            "containers.kv.config.maxkeys: unknown field `maxkeys`; the old config stays in force"
        );
    }

    fn registered(config: &Config) -> Vec<Registered> {
        config
            .containers
            .iter()
            .map(|(n, c)| Registered {
                name: n.as_str().to_owned(),
                plugin: c.plugin.clone(),
                configured: true,
            })
            .collect()
    }

    #[test]
    fn a_host_setting_changes_every_container_whatever_the_declaration_order() {
        let old = Config::parse(
            "[containers.web]\nplugin = \"echo\"\nrequires = [\"db\"]\n[containers.db]\nplugin = \"kv\"\n",
        )
        .expect("valid");
        let mut new = old.clone();
        new.host.stop_timeout_ms = crate::config::Millis::try_from(5_000).expect("positive");
        let plan = diff(&old, &new, &old.host, &registered(&old));
        assert_eq!(plan.report.changed, ["db", "web"]);
        assert_eq!(plan.forget, ["db", "web"]);
        assert_eq!(plan.check, ["db", "web"]);
        assert_eq!(plan.host.stop_timeout_ms, new.host.stop_timeout_ms);
    }

    #[test]
    fn restart_only_settings_are_reported_and_kept() {
        let old = Config::default();
        let mut new = old.clone();
        new.host.listen = Some("127.0.0.1:9999".parse().expect("address"));
        let plan = diff(&old, &new, &old.host, &[]);
        assert_eq!(plan.report.needs_restart, ["host.listen"]);
        assert_eq!(plan.host.listen, None);
        assert!(plan.forget.is_empty());
    }

    #[test]
    fn a_configured_instance_replaces_the_default_one() {
        let old = Config::default();
        let new = Config::parse("[containers.web]\nplugin = \"echo\"\n").expect("valid");
        let default = Registered {
            name: "echo".into(),
            plugin: "echo".into(),
            configured: false,
        };
        let plan = diff(&old, &new, &old.host, &[default]);
        assert_eq!(plan.report.added, ["web"]);
        assert_eq!(plan.forget, ["echo"]);
        assert_eq!(plan.check, ["web"]);
    }
}
