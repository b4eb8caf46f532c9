//! The container set: every registered container by name, in registration order, and what
//! the supervisor owns of each: its spec, whether it should run, what holds it back, its
//! restart history, its live instance and its status.
//!
//! A container's status lives here and nowhere else; every change goes through
//! [`Containers::show`] or [`Containers::set_state`], which put it on the board at once.
//! The board is a projection for readers: nothing here reads it back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ContainerConfig, HostConfig, ReloadMode};
use crate::events::EventKind;
use crate::model::{ContainerStatus, HISTORY, State, Transition, rfc3339};
use crate::platform::Confinement;
use crate::probes::ProbeSpec;
use crate::restart::{Backoff, RestartPolicy, Restarts};
use crate::services::HostServices;
use crate::sockets::Address;
use crate::status::Board;

/// How a container runs, resolved from its config, the host's defaults and its plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Declared in the config file (else the plugin's default instance).
    pub configured: bool,
    pub config_json: String,
    /// Its config file entry as JSON, as the one-container view shows it.
    pub entry: Option<Arc<serde_json::Value>>,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    /// Names of the containers that must be ready before this one starts.
    pub requires: Vec<String>,
    pub policy: RestartPolicy,
    pub backoff: Backoff,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
    /// Where its calls run, and the memory limit of its process.
    pub confinement: Confinement,
    /// The sockets the host holds for it, by name.
    pub listen: BTreeMap<String, Address>,
    pub reload: ReloadMode,
}

impl Spec {
    /// The spec of a configured container (`config`), or of a plugin's default instance.
    pub fn resolve(
        config: Option<&ContainerConfig>,
        host: &HostConfig,
        default_requires: &[String],
    ) -> Self {
        let liveness_default = ProbeSpec {
            period: host.health_interval_ms.duration(),
            timeout: host.health_timeout_ms.duration(),
            ..ProbeSpec::LIVENESS
        };
        let requires = match config.and_then(|c| c.requires.as_ref()) {
            Some(names) => names.iter().map(|n| n.as_str().to_owned()).collect(),
            None => default_requires.to_vec(),
        };
        let default = crate::config::ProbeConfig::default();
        Self {
            configured: config.is_some(),
            config_json: config.map_or_else(|| "{}".to_owned(), ContainerConfig::config_json),
            entry: config.map(|c| Arc::new(c.entry_json())),
            start_timeout: config
                .and_then(|c| c.start_timeout_ms)
                .unwrap_or(host.start_timeout_ms)
                .duration(),
            stop_timeout: config
                .and_then(|c| c.stop_timeout_ms)
                .unwrap_or(host.stop_timeout_ms)
                .duration(),
            requires,
            policy: config.map(|c| c.restart).unwrap_or_default(),
            backoff: config.map(|c| c.backoff.resolve()).unwrap_or_default(),
            liveness: ProbeSpec::from_config(
                config.map_or(&default, |c| &c.liveness),
                liveness_default,
            ),
            readiness: ProbeSpec::from_config(
                config.map_or(&default, |c| &c.readiness),
                ProbeSpec::READINESS,
            ),
            listen: config
                .map(|c| {
                    c.listen
                        .iter()
                        .map(|(name, address)| (name.as_str().to_owned(), address.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            reload: match config.and_then(|c| c.reload) {
                Some(mode) => mode,
                None if config.is_some_and(|c| !c.listen.is_empty()) => ReloadMode::Overlap,
                None => ReloadMode::StopFirst,
            },
            confinement: Confinement {
                isolation: config.and_then(|c| c.isolation).unwrap_or(host.isolation),
                memory_max_bytes: config.and_then(|c| c.memory_max_bytes).map(|b| b.get()),
            },
        }
    }
}

/// What keeps a container that should run from being started now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing: start it as soon as what it requires is ready.
    Free,
    /// Backoff or quarantine: not before this time.
    Until(Instant),
    /// Ended, and its restart policy says no restart: only a manual start (or a new
    /// version of its plugin) brings it back.
    Parked,
    /// Its plugin refused its config: nothing changes that until its config, its plugin
    /// file or a manual request does.
    BadConfig,
}

/// A live instance: its worker thread, its side of the `Context`, its probe task.
pub struct Instance<W> {
    /// Unique per instance, so results of an instance that is gone are told apart.
    pub id: u64,
    pub generation: u64,
    pub worker: Arc<W>,
    pub services: HostServices,
    pub probe_task: Option<JoinHandle<()>>,
}

/// A registered container.
pub struct Container<W> {
    pub name: String,
    pub plugin: String,
    pub spec: Spec,
    /// Whether it should run: false after a stop request, true after a start request.
    pub wanted: bool,
    pub hold: Hold,
    pub restarts: Restarts,
    /// Live and ready (readiness is pushed by the plugin or set by the probe).
    pub ready: bool,
    pub instance: Option<Instance<W>>,
    status: ContainerStatus,
}

impl<W> Container<W> {
    pub fn status(&self) -> &ContainerStatus {
        &self.status
    }

    pub fn state(&self) -> State {
        self.status.state
    }

    pub fn is_live(&self) -> bool {
        self.instance.is_some()
    }

    /// Whether it should be started now, its requirements permitting.
    pub fn is_due(&self) -> bool {
        self.wanted && self.instance.is_none() && self.hold == Hold::Free
    }
}

/// Every registered container, by name, in registration order.
pub struct Containers<W> {
    map: IndexMap<String, Container<W>>,
    board: Board,
}

impl<W> Containers<W> {
    pub fn new(board: Board) -> Self {
        Self {
            map: IndexMap::new(),
            board,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Container<W>> {
        self.map.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Container<W>> {
        self.map.get_mut(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Container<W>> {
        self.map.values()
    }

    /// Names of the containers that match `keep`, in registration order.
    pub fn names_where(&self, mut keep: impl FnMut(&Container<W>) -> bool) -> Vec<String> {
        self.map
            .values()
            .filter(|c| keep(c))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Registers a container, stopped, and shows it.
    pub fn register(&mut self, name: &str, plugin: &str, spec: Spec) {
        let mut status = ContainerStatus::registered(
            name,
            plugin,
            spec.requires.clone(),
            spec.confinement.isolation,
        );
        status.config.clone_from(&spec.entry);
        self.board.put_container(&status);
        self.board.metrics.container_registered(name);
        self.map.insert(
            name.to_owned(),
            Container {
                name: name.to_owned(),
                plugin: plugin.to_owned(),
                spec,
                wanted: true,
                hold: Hold::Free,
                restarts: Restarts::default(),
                ready: false,
                instance: None,
                status,
            },
        );
    }

    /// Forgets a container (it must not be live) and takes it off the board.
    pub fn deregister(&mut self, name: &str) -> Option<Container<W>> {
        let container = self.map.shift_remove(name)?;
        self.board.remove_container(name);
        Some(container)
    }

    /// Changes a container's status with `f` and shows it.
    pub fn show(&mut self, name: &str, f: impl FnOnce(&mut ContainerStatus)) {
        if let Some(container) = self.map.get_mut(name) {
            f(&mut container.status);
            self.board.put_container(&container.status);
        }
    }

    /// Records a state change; `reason` replaces `last_error` when given, and `running`
    /// clears it. Entering `starting` resets readiness and health (on every restart).
    pub fn set_state(&mut self, name: &str, state: State, reason: Option<String>) {
        let Some(container) = self.map.get_mut(name) else {
            return;
        };
        let status = &mut container.status;
        let mut transition = None;
        let now = rfc3339(SystemTime::now());
        if status.state != state {
            status.since = now.clone();
            transition = Some(Transition {
                at: now,
                from: status.state,
                to: state,
                reason: reason.clone(),
            });
        }
        status.state = state;
        // The last error stays visible through backoff and restarts until it runs again.
        if reason.is_some() || state == State::Running {
            status.last_error = reason;
        }
        if state != State::Running {
            status.ready = false;
            container.ready = false;
        }
        if state == State::Starting {
            status.health = None;
            status.next_retry = None;
        }
        if let Some(t) = &transition {
            status.history.push(t.clone());
            let excess = status.history.len().saturating_sub(HISTORY);
            status.history.drain(..excess);
        }
        self.board.put_container(status);
        if let Some(t) = transition {
            self.board.events.publish(EventKind::State {
                container: name.to_owned(),
                from: t.from,
                to: t.to,
                reason: t.reason,
            });
        }
    }

    /// All containers in start order: requirements first, otherwise registration order
    /// (each next one is the first in registration order whose requirements are placed).
    pub fn start_order(&self) -> Vec<String> {
        let all: Vec<&Container<W>> = self.map.values().collect();
        let mut placed = vec![false; all.len()];
        let mut order = Vec::with_capacity(all.len());
        let is_placed =
            |placed: &[bool], name: &str| self.map.get_index_of(name).is_none_or(|at| placed[at]);
        while order.len() < all.len() {
            let next = (0..all.len())
                .find(|&i| !placed[i] && all[i].spec.requires.iter().all(|r| is_placed(&placed, r)))
                // Config validation rules out cycles; place the rest in order if one slips in.
                .or_else(|| (0..all.len()).find(|&i| !placed[i]));
            let Some(next) = next else { break };
            placed[next] = true;
            order.push(all[next].name.clone());
        }
        order
    }

    /// `names` ordered so that each container comes before what it requires (the reverse
    /// of the start order).
    pub fn stop_order(&self, names: &[String]) -> Vec<String> {
        if names.len() < 2 {
            return names.to_vec();
        }
        let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut order = self.start_order();
        order.reverse();
        order.retain(|n| wanted.contains(n.as_str()));
        order
    }

    /// Every container that requires `name`, directly or not, in stop order.
    pub fn dependents_of(&self, name: &str) -> Vec<String> {
        let mut dependents: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_owned()];
        while let Some(required) = frontier.pop() {
            for c in self.map.values() {
                if c.spec.requires.contains(&required) && !dependents.contains(&c.name) {
                    dependents.push(c.name.clone());
                    frontier.push(c.name.clone());
                }
            }
        }
        self.stop_order(&dependents)
    }

    /// Why `name` may not start yet: the requirements not running and ready.
    pub fn unready_requirements(&self, name: &str) -> Option<String> {
        let container = self.map.get(name)?;
        let missing: Vec<String> = container
            .spec
            .requires
            .iter()
            .filter_map(|required| match self.map.get(required) {
                None => Some(format!("{required} (not registered)")),
                Some(r) if r.is_live() && r.ready => None,
                Some(r) if r.is_live() => Some(format!("{required} (not ready)")),
                Some(r) => Some(format!("{required} ({})", r.state().as_str())),
            })
            .collect();
        (!missing.is_empty()).then(|| format!("waiting for {}", missing.join(", ")))
    }

    /// When the next backoff or quarantine ends.
    pub fn next_retry(&self) -> Option<Instant> {
        self.map
            .values()
            .filter_map(|c| match c.hold {
                Hold::Until(at) if c.wanted && !c.is_live() => Some(at),
                _ => None,
            })
            .min()
    }

    /// The plugins of the containers that wait to restart (a backoff or a quarantine):
    /// their generation in memory is kept for the restart.
    pub fn awaiting_restart(&self) -> BTreeSet<&str> {
        self.map
            .values()
            .filter(|c| matches!(c.hold, Hold::Until(_)) && c.wanted && !c.is_live())
            .map(|c| c.plugin.as_str())
            .collect()
    }

    /// Ends the backoffs and quarantines that are over.
    pub fn release_due_holds(&mut self, now: Instant) {
        for c in self.map.values_mut() {
            if matches!(c.hold, Hold::Until(at) if at <= now) {
                c.hold = Hold::Free;
            }
        }
    }
}
