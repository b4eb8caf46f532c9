//! Supervision: dependencies, readiness, probe results that act, restarts with backoff and
//! quarantine.
//!
//! After every event the supervisor converges: every container that should run, is not
//! held back by a backoff or quarantine, and whose requirements are all running and ready
//! is started; independent ones start together, in waves, so a dependent starts only once
//! what it requires is ready. A failure (failed or stuck start, panic, failed liveness)
//! stops the container's dependents and asks its restart policy what to do next.

use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Hold, Supervisor};
use crate::events::EventKind;
use crate::probes::{ProbeKind, ProbeReport, Verdict};
use crate::restart::Decision;
use crate::services::{Notice, NoticeFrom};
use crate::status::{HealthStatus, State, rfc3339};

/// How many probe results the status keeps per container.
const PROBE_HISTORY: usize = 10;

impl Supervisor {
    /// Starts, wave after wave, every container that should run and can.
    pub(super) async fn converge(&mut self) {
        if self.shutting_down {
            return;
        }
        loop {
            let mut wave = Vec::new();
            for index in 0..self.containers.len() {
                let c = &self.containers[index];
                let eligible = c.wanted
                    && c.instance.is_none()
                    && c.hold == Hold::Free
                    && self.providers.contains_key(&c.plugin);
                if !eligible {
                    continue;
                }
                match self.unready_requirements(index) {
                    None => wave.push(index),
                    Some(reason) => self.set_waiting(index, reason),
                }
            }
            if wave.is_empty() {
                return;
            }
            self.start_many(wave).await;
        }
    }

    /// Why container `index` may not start yet: the requirements not running and ready.
    pub(super) fn unready_requirements(&self, index: usize) -> Option<String> {
        let missing: Vec<String> = self.containers[index]
            .requires
            .iter()
            .filter_map(|required| match self.index_of(required) {
                None => Some(format!("{required} (not registered)")),
                Some(i) if self.containers[i].instance.is_some() && self.containers[i].ready => {
                    None
                }
                Some(i) => {
                    let state = self
                        .board
                        .container(required)
                        .map(|s| serde_json::to_value(s.state).ok())
                        .and_then(|v| v.and_then(|v| v.as_str().map(str::to_owned)))
                        .unwrap_or_default();
                    let why = if self.containers[i].instance.is_some() {
                        "not ready".to_owned()
                    } else {
                        state
                    };
                    Some(format!("{required} ({why})"))
                }
            })
            .collect();
        (!missing.is_empty()).then(|| format!("waiting for {}", missing.join(", ")))
    }

    pub(super) fn set_waiting(&self, index: usize, reason: String) {
        let name = &self.containers[index].name;
        let current = self.board.container(name);
        let changed = current
            .is_none_or(|s| s.state != State::Waiting || s.last_error.as_deref() != Some(&reason));
        if changed {
            info!(container = %name, generation = %self.generation_of(name), reason = %reason, "container waiting");
            self.set_state(name, State::Waiting, Some(reason));
        }
    }

    /// After a container failed (it is `failed`, its instance torn down): stop its
    /// dependents and apply its restart policy.
    pub(super) async fn after_failure(&mut self, name: &str) {
        let Some(index) = self.index_of(name) else {
            return;
        };
        self.containers[index].ready = false;
        self.stop_dependents(index, "failed").await;
        let Some(index) = self.index_of(name) else {
            return;
        };
        if self.shutting_down || !self.containers[index].wanted {
            return;
        }
        let now = Instant::now();
        let container = &mut self.containers[index];
        let decision = container.restarts.after_exit(
            container.policy,
            true,
            &container.backoff,
            now,
            fastrand::f64(),
        );
        let count = container.restarts.count;
        if decision != Decision::Stay {
            self.board.metrics.restart(name);
        }
        match decision {
            Decision::RestartAt(at) if at <= now => {
                container.hold = Hold::Free;
                info!(container = %name, generation = %self.generation_of(name), restarts = count, "restarting at once");
            }
            Decision::RestartAt(at) => {
                container.hold = Hold::Until(at);
                let delay_ms = at.duration_since(now).as_millis() as u64;
                info!(container = %name, generation = %self.generation_of(name), restarts = count, delay_ms, "restarting after a backoff");
                self.show_retry(name, State::Backoff, at);
            }
            Decision::QuarantineUntil(at) => {
                container.hold = Hold::Until(at);
                let max = container.backoff.max_restarts;
                let window_s = container.backoff.window.as_secs();
                warn!(container = %name, generation = %self.generation_of(name), max, window_s, "too many restarts: quarantined");
                self.show_retry(name, State::Quarantined, at);
            }
            Decision::Stay => container.hold = Hold::Failed,
        }
        self.board.update_container(name, |s| s.restarts = count);
    }

    fn show_retry(&self, name: &str, state: State, at: Instant) {
        let wall = SystemTime::now() + at.saturating_duration_since(Instant::now());
        self.set_state(name, state, None);
        self.board
            .update_container(name, |s| s.next_retry = Some(rfc3339(wall)));
    }

    /// Stops every live container that requires container `index`, directly or not,
    /// dependents first. They stay wanted and come back once it is ready again.
    pub(super) async fn stop_dependents(&mut self, index: usize, what: &str) {
        let root = self.containers[index].name.clone();
        let mut dependents: Vec<usize> = Vec::new();
        let mut frontier = vec![root.clone()];
        while let Some(name) = frontier.pop() {
            for (i, c) in self.containers.iter().enumerate() {
                if c.requires.contains(&name) && !dependents.contains(&i) {
                    dependents.push(i);
                    frontier.push(c.name.clone());
                }
            }
        }
        for i in self.stop_order(dependents) {
            if self.containers[i].instance.is_none() {
                continue;
            }
            let name = self.containers[i].name.clone();
            let reason = format!("requires {root}, which {what}");
            info!(container = %name, generation = %self.generation_of(&name), reason = %reason, "stopping a dependent");
            let timeout = self.containers[i].stop_timeout;
            if self.stop_container(i, timeout).await.is_ok() {
                self.set_state(&name, State::Waiting, Some(reason));
            }
        }
    }

    /// `indices` ordered so that each container comes before what it requires (the
    /// reverse of the start order).
    pub(super) fn stop_order(&self, indices: Vec<usize>) -> Vec<usize> {
        let order = self.start_order();
        let mut sorted: Vec<usize> = order
            .into_iter()
            .rev()
            .filter(|i| indices.contains(i))
            .collect();
        sorted.dedup();
        sorted
    }

    /// All containers in start order: requirements first, otherwise registration order.
    pub(super) fn start_order(&self) -> Vec<usize> {
        let mut placed = vec![false; self.containers.len()];
        let mut order = Vec::with_capacity(self.containers.len());
        while order.len() < self.containers.len() {
            let next = (0..self.containers.len()).find(|&i| {
                !placed[i]
                    && self.containers[i]
                        .requires
                        .iter()
                        .all(|r| self.index_of(r).is_none_or(|j| placed[j]))
            });
            // Config validation rules out cycles; place the rest in order if one slips in.
            let next = next.unwrap_or_else(|| {
                (0..self.containers.len())
                    .find(|&i| !placed[i])
                    .unwrap_or(0)
            });
            placed[next] = true;
            order.push(next);
        }
        order
    }

    /// When the next backoff or quarantine ends.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.containers
            .iter()
            .filter_map(|c| match c.hold {
                Hold::Until(at) if c.wanted && c.instance.is_none() => Some(at),
                _ => None,
            })
            .min()
    }

    /// Ends the backoffs and quarantines that are over; `converge` then starts them.
    pub(super) fn release_due_holds(&mut self) {
        let now = Instant::now();
        for c in &mut self.containers {
            if matches!(c.hold, Hold::Until(at) if at <= now) {
                c.hold = Hold::Free;
            }
        }
    }

    /// A manual restart: clears the counters and any backoff or quarantine, stops the
    /// container if it runs, and starts it.
    pub(super) async fn restart_by_hand(&mut self, index: usize) {
        let name = self.containers[index].name.clone();
        info!(container = %name, generation = %self.generation_of(&name), "restart requested");
        self.containers[index].restarts.clear();
        self.containers[index].wanted = true;
        self.board.update_container(&name, |s| s.restarts = 0);
        if self.containers[index].instance.is_some() {
            self.stop_dependents(index, "is restarting").await;
            let timeout = self.containers[index].stop_timeout;
            // A failed stop is reported in the status; the start below goes ahead.
            let _ = self.stop_container(index, timeout).await;
        }
        if let Some(index) = self.index_of(&name) {
            self.start_container(index).await;
        }
    }

    /// A probe result of instance `instance` of container `name`.
    pub(super) async fn on_probe(&mut self, name: &str, instance: u64, report: ProbeReport) {
        let Some(index) = self.index_of(name) else {
            return;
        };
        let current = self.containers[index].instance.as_ref().map(|i| i.id);
        if current != Some(instance) {
            return; // From an instance that is gone.
        }
        let record = report.record;
        self.board
            .metrics
            .probe(record.probe, record.ok, record.duration_ms);
        if !record.ok {
            match record.probe {
                ProbeKind::Liveness => {
                    warn!(container = %name, generation = %self.generation_of(name), reason = %record.message, "health check failed")
                }
                ProbeKind::Readiness => {
                    warn!(container = %name, generation = %self.generation_of(name), reason = %record.message, "readiness check failed")
                }
            }
        }
        let mut health_changed = None;
        self.board.update_container(name, |status| {
            if record.probe == ProbeKind::Liveness {
                if status
                    .health
                    .as_ref()
                    .is_none_or(|h| h.healthy != record.ok)
                {
                    health_changed = Some((record.ok, record.message.clone()));
                }
                status.health = Some(HealthStatus {
                    healthy: record.ok,
                    message: record.message.clone(),
                    checked_at: record.at.clone(),
                    duration_ms: record.duration_ms,
                });
            }
            status.probes.push(record);
            let excess = status.probes.len().saturating_sub(PROBE_HISTORY);
            status.probes.drain(..excess);
        });
        if let Some((healthy, message)) = health_changed {
            self.board.events.publish(EventKind::Health {
                container: name.to_owned(),
                healthy,
                message,
            });
        }
        match report.verdict {
            Verdict::Steady => {}
            Verdict::Ready(ready) => self.set_ready(index, ready),
            Verdict::Dead(reason) => {
                self.fail(name, reason);
                if let Some(instance) = self.containers[index].instance.take() {
                    self.teardown(index, instance, true).await;
                }
                self.after_failure(name).await;
            }
        }
    }

    /// What a container reported of its own accord.
    pub(super) async fn on_notice(&mut self, notice: NoticeFrom) {
        let name = notice.container.to_string();
        let Some(index) = self.index_of(&name) else {
            return;
        };
        let current = self.containers[index].instance.as_ref().map(|i| i.id);
        if current != Some(notice.instance) {
            return; // From an instance that is gone, or one still starting.
        }
        match notice.notice {
            Notice::Ready(ready) => self.set_ready(index, ready),
            Notice::Failed(reason) => {
                self.fail(&name, format!("reported failure: {reason}"));
                if let Some(instance) = self.containers[index].instance.take() {
                    self.teardown(index, instance, true).await;
                }
                self.after_failure(&name).await;
            }
            // Interface 1.2; handled by the supervisor rewrite.
            Notice::Finished(_) => {}
        }
    }

    pub(super) fn set_ready(&mut self, index: usize, ready: bool) {
        let container = &mut self.containers[index];
        if container.instance.is_none() || container.ready == ready {
            return;
        }
        container.ready = ready;
        let now = Instant::now();
        if ready {
            container.restarts.on_ready(now);
        } else {
            container.restarts.on_not_ready(&container.backoff, now);
        }
        let name = container.name.clone();
        info!(container = %name, generation = %self.generation_of(&name), ready, "readiness changed");
        self.board.update_container(&name, |s| s.ready = ready);
        self.board.events.publish(EventKind::Readiness {
            container: name,
            ready,
        });
    }
}
