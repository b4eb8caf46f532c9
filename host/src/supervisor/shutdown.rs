//! Stopping everything: in reverse dependency order (independent containers together),
//! each within its stop timeout and all within the shutdown budget; then every generation
//! is unloaded.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::handle::{ShutdownReport, StopFailure};
use super::teardown::end_instance;
use super::{Phase, Supervisor};
use crate::model::State;
use crate::platform::{Calls, Platform};

impl<P: Platform> Supervisor<P> {
    pub(super) async fn shutdown(&mut self) -> ShutdownReport {
        self.platform.unwatch();
        self.phase = Phase::ShuttingDown;
        let budget = self.host.shutdown_timeout_ms.duration();
        // The budget counts from the signal, not from when the supervisor got to it.
        let asked = self.shared.stop_requested_at().unwrap_or_else(Instant::now);
        let deadline = asked + budget;
        info!(budget_ms = budget.as_millis() as u64, "shutting down");
        let mut report = ShutdownReport {
            failures: std::mem::take(&mut self.given_up),
            ..ShutdownReport::default()
        };
        let all = self.containers.names_where(|c| c.is_live());
        // In waves: each container once everything that requires it has stopped; the
        // containers of one wave (independent of each other) stop together.
        let mut pending = self.containers.stop_order(&all);
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for name in std::mem::take(&mut pending) {
                    let reason = self.abandon(&name, budget);
                    report.failures.push(StopFailure {
                        container: name,
                        reason,
                    });
                }
                break;
            }
            let (wave, rest) = self.next_wave(std::mem::take(&mut pending));
            pending = rest;
            self.stop_together(&wave, left, &mut report).await;
        }
        // The held sockets close (a Unix socket's file is removed) once nothing serves them.
        self.sockets.release_all();
        self.files.sweep(&mut self.platform, &Default::default());
        self.wait_for_closes(deadline).await;
        // What is still held now (a thread in a call given up) stays mapped: say so.
        self.files
            .pin_held("still in use by a thread of a call given up at shutdown");
        report.not_unloaded = self.files.not_unloaded().to_vec();
        for failure in &report.failures {
            warn!(container = %failure.container, reason = %failure.reason, "did not stop cleanly");
        }
        report
    }

    /// Splits `pending` (in stop order) into the containers nothing else in it requires,
    /// which may stop now and together, and the rest, both still in stop order. Linear in
    /// the containers and their requirements: a thousand must not cost a million lookups.
    fn next_wave(&self, pending: Vec<String>) -> (Vec<String>, Vec<String>) {
        let required: HashSet<&str> = pending
            .iter()
            .filter_map(|name| self.containers.get(name))
            .flat_map(|c| c.spec.requires.iter().map(String::as_str))
            .collect();
        if required.is_empty() {
            return (pending, Vec::new());
        }
        let (wave, rest): (Vec<&String>, Vec<&String>) = pending
            .iter()
            .partition(|name| !required.contains(name.as_str()));
        if wave.is_empty() {
            // A cycle (config validation rules them out): stop the rest together.
            return (pending, Vec::new());
        }
        let owned = |names: Vec<&String>| names.into_iter().cloned().collect();
        (owned(wave), owned(rest))
    }

    /// Stops `names`, which do not require each other, at once: each within its stop
    /// timeout and what is `left` of the budget.
    async fn stop_together(
        &mut self,
        names: &[String],
        left: Duration,
        report: &mut ShutdownReport,
    ) {
        let mut endings = Vec::with_capacity(names.len());
        for name in names {
            let timeout = self
                .containers
                .get(name)
                .map_or(left, |c| c.spec.stop_timeout.min(left));
            let Some(instance) = self
                .containers
                .get_mut(name)
                .and_then(|c| c.instance.take())
            else {
                continue;
            };
            let generation = instance.generation;
            self.containers.set_state(name, State::Stopping, None);
            info!(container = %name, generation, "container stopping");
            let name = name.clone();
            endings.push(async move {
                let ended = end_instance(&name, instance, true, false, timeout).await;
                (name, generation, ended)
            });
        }
        for (name, generation, ended) in futures_util::future::join_all(endings).await {
            match self.record_end(&name, ended) {
                Ok(()) => {
                    self.containers.set_state(&name, State::Stopped, None);
                    info!(container = %name, generation, "container stopped");
                }
                Err(reason) => {
                    self.fail(&name, reason.clone());
                    report.failures.push(StopFailure {
                        container: name,
                        reason,
                    });
                }
            }
        }
    }

    /// Waits for the closes in flight to report, each until its own timeout, all until the
    /// end of the shutdown budget; what is still closing then is listed as not unloaded.
    async fn wait_for_closes(&mut self, deadline: Instant) {
        while !self.files.closing_done() {
            let due = self
                .files
                .next_close_due()
                .map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                closed = self.inbox.closes.recv() => match closed {
                    Some(closed) => self.files.closed(closed),
                    None => break,
                },
                () = tokio::time::sleep_until(due) => {
                    // At the end of the budget every close still in flight counts as overdue.
                    let as_of = if due >= deadline {
                        Instant::now() + Duration::from_secs(24 * 3600)
                    } else {
                        Instant::now()
                    };
                    self.files.close_overdue(as_of);
                }
            }
        }
    }

    /// A container whose turn came after the budget was used up is not called at all: a
    /// stop with no time left would fail and blame a container that did nothing wrong.
    /// Its thread and generation are left to the exiting process.
    fn abandon(&mut self, name: &str, budget: Duration) -> String {
        let reason = format!(
            "not stopped: the shutdown budget ({} ms, host.shutdown_timeout_ms) was used up before its turn",
            budget.as_millis()
        );
        let instance = self
            .containers
            .get_mut(name)
            .and_then(|c| c.instance.take());
        if let Some(mut instance) = instance {
            if let Some(task) = instance.probe_task.take() {
                task.abort();
            }
            instance.services.request_stop();
            let library = instance.worker.library().clone();
            self.files
                .pin(&*library, format!("container `{name}`: {reason}"));
        }
        self.fail(name, reason.clone());
        reason
    }
}
