//! What must hold after every step of a simulated sequence, and after its shutdown.

use std::collections::{BTreeMap, BTreeSet};

use super::Inspection;
use super::fake::World;
use crate::model::{FileState, State};
use crate::restart::RestartPolicy;
use crate::supervisor::ShutdownReport;
use crate::supervisor::set::Hold;

/// How much of the state space a run reached, so a green run is known to have been
/// somewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    pub steps: u64,
    pub running: u64,
    pub waiting: u64,
    pub backoff: u64,
    pub quarantined: u64,
    pub bad_config: u64,
    pub rolled_back: u64,
    pub not_unloaded: u64,
}

impl Reached {
    pub fn add(&mut self, other: Reached) {
        self.steps += other.steps;
        self.running += other.running;
        self.waiting += other.waiting;
        self.backoff += other.backoff;
        self.quarantined += other.quarantined;
        self.bad_config += other.bad_config;
        self.rolled_back += other.rolled_back;
        self.not_unloaded += other.not_unloaded;
    }

    fn count(&mut self, seen: &Inspection) {
        let states = |state| {
            seen.containers
                .iter()
                .filter(|c| c.status.state == state)
                .count() as u64
        };
        self.steps += 1;
        self.running += states(State::Running);
        self.waiting += states(State::Waiting);
        self.backoff += states(State::Backoff);
        self.quarantined += states(State::Quarantined);
        self.bad_config += seen
            .containers
            .iter()
            .filter(|c| c.hold == Hold::BadConfig)
            .count() as u64;
        self.rolled_back += seen
            .plugins
            .iter()
            .filter(|p| p.error_kind.as_deref() == Some("rolled_back"))
            .count() as u64;
        self.not_unloaded += seen.not_unloaded.len() as u64;
    }
}

/// The invariants' memory across steps.
#[derive(Default)]
pub struct Checker {
    pub reached: Reached,
    names: Vec<String>,
    /// Files whose content was rolled back: (file, refused sha12) -> loads seen then.
    rolled_back: BTreeMap<(String, String), usize>,
    /// What each container requires, for the shutdown order.
    requires: BTreeMap<String, Vec<String>>,
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

impl Checker {
    /// The registered containers at the last step.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    pub fn after_step(&mut self, seen: &Inspection, world: &World) -> Result<(), String> {
        self.reached.count(seen);
        self.names = seen
            .containers
            .iter()
            .map(|c| c.status.name.clone())
            .collect();
        self.requires = seen
            .containers
            .iter()
            .map(|c| (c.status.name.clone(), c.requires.clone()))
            .collect();
        board_is_the_projection(seen)?;
        containers_are_consistent(seen)?;
        dependents_run_only_on_what_they_require(seen)?;
        memory_and_api_agree(seen, world)?;
        self.rollbacks_hold(seen, world)
    }

    /// A rolled-back content is never loaded again while the folder still holds it.
    fn rollbacks_hold(&mut self, seen: &Inspection, world: &World) -> Result<(), String> {
        for plugin in &seen.plugins {
            if plugin.error_kind.as_deref() == Some("rolled_back") {
                if let Some(sha) = &plugin.refused_sha256 {
                    self.rolled_back
                        .entry((plugin.file.clone(), sha.clone()))
                        .or_insert(world.loads.len());
                }
            }
        }
        let path = |file: &str| super::plugin_path(file);
        let mut broken = None;
        self.rolled_back.retain(|(file, sha), since| {
            let still_there = world
                .hash_of(&path(file))
                .is_some_and(|hash| hash.starts_with(sha.as_str()));
            if still_there {
                let again = world.loads[*since..]
                    .iter()
                    .any(|l| l.file == path(file) && l.hash.starts_with(sha.as_str()));
                if again {
                    broken = Some(format!("{file}: the rolled-back content {sha} was loaded again although the file did not change"));
                }
            }
            still_there
        });
        broken.map_or(Ok(()), Err)
    }

    pub fn after_shutdown(
        &mut self,
        report: &ShutdownReport,
        stops: &[String],
        requires: BTreeMap<String, Vec<String>>,
        world: &World,
    ) -> Result<(), String> {
        self.requires = requires;
        // Dependents stop before what they require.
        for (i, first) in stops.iter().enumerate() {
            for later in &stops[i + 1..] {
                ensure(!self.requires_transitively(later, first), || {
                    format!(
                        "shutdown stopped {first} before {later}, which requires it ({stops:?})"
                    )
                })?;
            }
        }
        // Everything is unloaded but what could not be, and the report says so.
        let pinned: BTreeSet<(String, u64)> = report
            .not_unloaded
            .iter()
            .map(|n| (n.file.clone(), n.generation))
            .collect();
        for generation in &world.in_memory {
            ensure(pinned.contains(generation), || {
                format!(
                    "after shutdown {generation:?} is in memory but not in not_unloaded {pinned:?}"
                )
            })?;
        }
        Ok(())
    }

    fn requires_transitively(&self, container: &str, required: &str) -> bool {
        let mut frontier = vec![container.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(name) = frontier.pop() {
            for r in self.requires.get(&name).into_iter().flatten() {
                if r == required {
                    return true;
                }
                if seen.insert(r.clone()) {
                    frontier.push(r.clone());
                }
            }
        }
        false
    }
}

/// The board shows exactly what the supervisor owns.
fn board_is_the_projection(seen: &Inspection) -> Result<(), String> {
    let shown = &seen.board;
    let owned: Vec<_> = seen.containers.iter().map(|c| &c.status).collect();
    let on_board: Vec<_> = shown.containers.iter().collect();
    ensure(owned == on_board, || {
        let only_owned: Vec<_> = owned.iter().filter(|c| !on_board.contains(c)).collect();
        let only_board: Vec<_> = on_board.iter().filter(|c| !owned.contains(c)).collect();
        format!(
            "the board's containers differ from the supervisor's:\n  owned only: {only_owned:?}\n  board only: {only_board:?}"
        )
    })?;
    ensure(seen.plugins == shown.plugins, || {
        let owned: Vec<_> = seen
            .plugins
            .iter()
            .filter(|p| !shown.plugins.contains(p))
            .collect();
        let board: Vec<_> = shown
            .plugins
            .iter()
            .filter(|p| !seen.plugins.contains(p))
            .collect();
        format!(
            "the board's plugin files differ:\n  owned only: {owned:?}\n  board only: {board:?}"
        )
    })?;
    ensure(seen.not_unloaded == shown.not_unloaded, || {
        "the board's not_unloaded differs from the supervisor's".into()
    })
}

/// Each container's state, instance, hold and counters agree with each other and the policy.
fn containers_are_consistent(seen: &Inspection) -> Result<(), String> {
    for c in &seen.containers {
        let s = &c.status;
        let name = &s.name;
        ensure(c.live.is_some() == (s.state == State::Running), || {
            format!("{name}: live = {:?} but state {:?}", c.live, s.state)
        })?;
        ensure(!s.ready || c.live.is_some(), || {
            format!("{name}: ready but not live")
        })?;
        ensure(s.ready == c.ready, || {
            format!("{name}: shown ready {} owned {}", s.ready, c.ready)
        })?;
        if let Some((_, generation)) = &c.live {
            ensure(s.generation == Some(*generation), || {
                format!(
                    "{name}: shows generation {:?} but runs {generation}",
                    s.generation
                )
            })?;
        }
        ensure(c.policy != RestartPolicy::Never || s.restarts == 0, || {
            format!("{name}: restart = never, yet {} restarts", s.restarts)
        })?;
        match s.state {
            State::Backoff | State::Quarantined => {
                ensure(
                    matches!(c.hold, Hold::Until(_)) && s.next_retry.is_some(),
                    || {
                        format!(
                            "{name}: {:?} without a retry time (hold {:?})",
                            s.state, c.hold
                        )
                    },
                )?;
            }
            State::Starting | State::Stopping => {
                return Err(format!("{name}: {:?} between steps", s.state));
            }
            _ => {}
        }
        if c.hold == Hold::BadConfig {
            let prefix = format!("containers.{name}.config");
            ensure(
                s.state == State::Failed
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with(&prefix)),
                || {
                    format!(
                        "{name}: held for a bad config, but {:?} {:?}",
                        s.state, s.last_error
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// A container starts only once what it requires runs and is ready, and while it runs,
/// what it requires runs.
fn dependents_run_only_on_what_they_require(seen: &Inspection) -> Result<(), String> {
    for (name, requirements) in &seen.starts {
        for (required, ready) in requirements {
            ensure(*ready, || {
                format!(
                    "{name} was started while {required}, which it requires, was not running and ready"
                )
            })?;
        }
    }
    let by_name: BTreeMap<&str, _> = seen
        .containers
        .iter()
        .map(|c| (c.status.name.as_str(), c))
        .collect();
    for c in seen.containers.iter().filter(|c| c.live.is_some()) {
        for required in &c.requires {
            let runs = by_name
                .get(required.as_str())
                .is_some_and(|r| r.live.is_some());
            ensure(runs, || {
                format!(
                    "{} runs but {required}, which it requires, does not",
                    c.status.name
                )
            })?;
        }
    }
    Ok(())
}

/// Every generation in memory serves a live instance, is kept for a container waiting to
/// restart, or is reported as not unloadable; every one reported is really still in memory.
fn memory_and_api_agree(seen: &Inspection, world: &World) -> Result<(), String> {
    let awaited: BTreeSet<&str> = seen
        .containers
        .iter()
        .filter(|c| matches!(c.hold, Hold::Until(_)) && c.wanted && c.live.is_none())
        .map(|c| c.status.plugin.as_str())
        .collect();
    let kept: Vec<(String, u64)> = seen
        .plugins
        .iter()
        .filter(|p| p.status != FileState::Error)
        .filter(|p| p.name.as_deref().is_some_and(|n| awaited.contains(n)))
        .filter_map(|p| Some((p.file.clone(), p.generation?)))
        .collect();
    let used: BTreeSet<&(String, u64)> = seen
        .containers
        .iter()
        .filter_map(|c| c.live.as_ref())
        .chain(&kept)
        .collect();
    let pinned: BTreeSet<(String, u64)> = seen
        .not_unloaded
        .iter()
        .map(|n| (n.file.clone(), n.generation))
        .collect();
    for generation in &world.in_memory {
        ensure(
            used.contains(generation) || pinned.contains(generation),
            || {
                format!(
                    "{generation:?} is in memory, serves no live container and is not in not_unloaded {pinned:?}"
                )
            },
        )?;
    }
    for generation in &seen.in_memory {
        ensure(world.in_memory.contains(generation), || {
            format!(
                "the supervisor holds {generation:?}, which is not in memory ({:?}; the supervisor holds {:?}; closed: {:?})",
                world.in_memory, seen.in_memory, world.unloads
            )
        })?;
        ensure(
            used.contains(generation) || pinned.contains(generation),
            || format!("{generation:?} is held with no live container and is not in not_unloaded"),
        )?;
    }
    for generation in &pinned {
        ensure(world.in_memory.contains(generation), || {
            format!("not_unloaded lists {generation:?}, which is not in memory")
        })?;
    }
    Ok(())
}
