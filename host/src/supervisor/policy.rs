//! Supervision: dependencies, failures and restarts, probe results, notices.
//!
//! After every step the supervisor converges: every container that should run, is not
//! held back, and whose requirements are all running and ready is started; independent
//! ones together, in waves, so a dependent starts only once what it requires is ready. A
//! failure stops the container's dependents and asks its restart policy what follows.

use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{info, warn};

use super::set::Hold;
use super::{Phase, Supervisor};
use crate::events::EventKind;
use crate::model::{ContainerStatus, HealthStatus, ProbeKind, State, rfc3339};
use crate::platform::Platform;
use crate::probes::{ProbeReport, Verdict};
use crate::restart::Decision;
use crate::services::{Notice, NoticeFrom};

/// How many probe results the status keeps per container.
const PROBE_HISTORY: usize = 10;

/// How an instance ended, for its restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A failure: a failed or stuck start, a panic, a failed liveness, a reported failure.
    Failed,
    /// It said it finished its work.
    Finished,
}

impl<P: Platform> Supervisor<P> {
    /// Starts, wave after wave, every container that should run and can.
    pub(super) async fn converge(&mut self) {
        loop {
            if self.phase != Phase::Running || self.shared.stop_requested_at().is_some() {
                return;
            }
            let due = self
                .containers
                .names_where(|c| c.is_due() && self.files.provider(&c.plugin).is_some());
            let mut wave = Vec::new();
            for name in due {
                match self.containers.unready_requirements(&name) {
                    None => wave.push(name),
                    Some(reason) => self.set_waiting(&name, reason),
                }
            }
            if wave.is_empty() {
                return;
            }
            self.start_many(wave).await;
        }
    }

    pub(super) fn set_waiting(&mut self, name: &str, reason: String) {
        let Some(container) = self.containers.get(name) else {
            return;
        };
        let status = container.status();
        if status.state != State::Waiting || status.last_error.as_deref() != Some(&reason) {
            info!(container = %name, reason = %reason, "container waiting");
            self.containers
                .set_state(name, State::Waiting, Some(reason));
        }
    }

    /// After a container ended (it is `failed` or `stopped`, its instance torn down): stop
    /// its dependents and apply its restart policy.
    pub(super) async fn after_failure(&mut self, name: &str, exit: Exit) {
        if let Some(container) = self.containers.get_mut(name) {
            container.ready = false;
        }
        self.stop_dependents(name, "failed").await;
        if self.phase == Phase::ShuttingDown {
            return;
        }
        let random = self.rng.f64();
        let now = Instant::now();
        let Some(container) = self.containers.get_mut(name) else {
            return;
        };
        if !container.wanted {
            return;
        }
        let failed = exit == Exit::Failed;
        let decision = container.restarts.after_exit(
            container.spec.policy,
            failed,
            &container.spec.backoff,
            now,
            random,
        );
        let count = container.restarts.count;
        let generation = container.status().generation;
        match decision {
            Decision::RestartAt(at) if at <= now => {
                container.hold = Hold::Free;
                info!(container = %name, generation, restarts = count, "restarting at once");
            }
            Decision::RestartAt(at) => {
                container.hold = Hold::Until(at);
                let delay_ms = at.duration_since(now).as_millis() as u64;
                info!(container = %name, generation, restarts = count, delay_ms, "restarting after a backoff");
                self.show_retry(name, State::Backoff, at);
            }
            Decision::QuarantineUntil(at) => {
                container.hold = Hold::Until(at);
                let max = container.spec.backoff.max_restarts;
                let window_s = container.spec.backoff.window.as_secs();
                warn!(container = %name, generation, max, window_s, "too many restarts: quarantined");
                self.show_retry(name, State::Quarantined, at);
            }
            Decision::Stay => container.hold = Hold::Parked,
        }
        if decision != Decision::Stay {
            self.board.metrics.restart(name);
        }
        self.containers.show(name, |s| s.restarts = count);
    }

    fn show_retry(&mut self, name: &str, state: State, at: Instant) {
        let wall = SystemTime::now() + at.saturating_duration_since(Instant::now());
        self.containers.set_state(name, state, None);
        self.containers
            .show(name, |s| s.next_retry = Some(rfc3339(wall)));
    }

    /// Stops every live container that requires `name`, directly or not, dependents
    /// first. They stay wanted and come back once it is ready again.
    pub(super) async fn stop_dependents(&mut self, name: &str, what: &str) {
        for dependent in self.containers.dependents_of(name) {
            if !self.containers.get(&dependent).is_some_and(|c| c.is_live()) {
                continue;
            }
            let reason = format!("requires {name}, which {what}");
            info!(container = %dependent, reason = %reason, "stopping a dependent");
            if self.stop_container(&dependent).await.is_ok() {
                self.containers
                    .set_state(&dependent, State::Waiting, Some(reason));
            }
        }
    }

    /// A manual restart: clears the counters and any hold, stops the container if it runs
    /// (its dependents first), and starts it.
    pub(super) async fn restart_by_hand(
        &mut self,
        name: &str,
    ) -> Result<ContainerStatus, super::ControlError> {
        let container = self
            .containers
            .get_mut(name)
            .ok_or_else(|| super::ControlError::UnknownContainer(name.to_owned()))?;
        info!(container = %name, generation = container.status().generation, "restart requested");
        container.restarts.clear();
        container.wanted = true;
        let live = container.is_live();
        self.containers.show(name, |s| s.restarts = 0);
        if live {
            self.stop_dependents(name, "is restarting").await;
            // A failed stop is reported in the status; the start below goes ahead.
            let _ = self.stop_container(name).await;
        }
        self.start_now(name).await;
        self.status_of(name)
    }

    /// A probe result of instance `instance` of container `name`.
    pub(super) async fn on_probe(&mut self, name: &str, instance: u64, report: ProbeReport) {
        let Some(container) = self.containers.get(name) else {
            return;
        };
        if container.instance.as_ref().map(|i| i.id) != Some(instance) {
            return; // From an instance that is gone.
        }
        let generation = container.status().generation;
        let record = report.record;
        self.board
            .metrics
            .probe(record.probe, record.ok, record.duration_ms);
        if !record.ok {
            let check = match record.probe {
                ProbeKind::Liveness => "health check failed",
                ProbeKind::Readiness => "readiness check failed",
            };
            warn!(container = %name, generation, reason = %record.message, "{check}");
        }
        let mut health_changed = None;
        self.containers.show(name, |status| {
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
            Verdict::Ready(ready) => self.set_ready(name, ready),
            Verdict::Dead(reason) => self.fail_live(name, reason).await,
        }
    }

    /// What a container reported of its own accord since the last wake-up.
    pub(super) async fn on_notice(&mut self, wake: NoticeFrom) {
        let name = wake.container.to_string();
        for notice in wake.take() {
            let current = self
                .containers
                .get(&name)
                .and_then(|c| c.instance.as_ref())
                .map(|i| i.id);
            if current != Some(wake.instance) {
                return; // From an instance that is gone, or one still starting.
            }
            match notice {
                Notice::Ready(ready) => self.set_ready(&name, ready),
                Notice::Failed(reason) => {
                    self.fail_live(&name, format!("reported failure: {reason}"))
                        .await;
                }
                Notice::Finished(message) => self.finished(&name, message).await,
                Notice::Ended(reason) => {
                    self.fail_live(&name, format!("its process ended: {reason}"))
                        .await;
                }
            }
        }
    }

    /// The container said it finished its work: stop it; restart it only under `always`.
    async fn finished(&mut self, name: &str, message: String) {
        info!(container = %name, message = %message, "container finished its work");
        self.stop_dependents(name, "finished").await;
        let exit = match self.stop_container(name).await {
            Ok(()) => {
                let reason = format!("finished: {message}");
                self.containers.show(name, |s| s.last_error = Some(reason));
                Exit::Finished
            }
            Err(_) => Exit::Failed,
        };
        self.after_failure(name, exit).await;
    }

    /// A live container failed: it is torn down and its policy applies.
    async fn fail_live(&mut self, name: &str, reason: String) {
        self.fail(name, reason);
        let instance = self
            .containers
            .get_mut(name)
            .and_then(|c| c.instance.take());
        if let Some(instance) = instance {
            let _ = self.teardown(name, instance, true).await;
        }
        self.after_failure(name, Exit::Failed).await;
    }

    pub(super) fn set_ready(&mut self, name: &str, ready: bool) {
        let Some(container) = self.containers.get_mut(name) else {
            return;
        };
        if !container.is_live() || container.ready == ready {
            return;
        }
        container.ready = ready;
        let now = Instant::now();
        if ready {
            container.restarts.on_ready(now);
        } else {
            container
                .restarts
                .on_not_ready(&container.spec.backoff, now);
        }
        let generation = container.status().generation;
        info!(container = %name, generation, ready, "readiness changed");
        self.containers.show(name, |s| s.ready = ready);
        self.board.events.publish(EventKind::Readiness {
            container: name.to_owned(),
            ready,
        });
    }
}
