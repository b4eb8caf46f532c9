//! `balut check --run`: a scratch life cycle of one instance in a child process of its own,
//! served exactly as a container with `isolation = "process"` (`isolation::Child`): new,
//! start, ready, health, stop, drop, each under the config's timeouts. A crash, an abort
//! or an `exit()` in plugin code ends that process only, and is a verdict.
//!
//! As the host does: after a failed `start`, `stop` is called and the value dropped; after
//! a failed constructor there is nothing to stop or drop; a process that ended gets no more
//! calls.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Instance;
use super::report::{Report, Step, Verdict};
use crate::config::Config;
use crate::isolation::{Child, KILL_GRACE};
use crate::loader::{CallError, Library};
use crate::services::{HostServices, Notice};
use crate::sockets::Sockets;

/// How often readiness is asked while waiting for it.
const READY_POLL: Duration = Duration::from_millis(100);

/// A failed call's step: the error's text, and a kind for scripts.
fn failed(step: &'static str, since: Instant, error: &CallError) -> Step {
    let kind = match error {
        CallError::Panicked(_) => "panicked",
        CallError::BadConfig(_) => "bad_config",
        CallError::Timeout { .. } | CallError::Stuck => "timeout",
        CallError::Ended(_) => "crashed",
        CallError::Failed(_) | CallError::NotConstructed => "failed",
    };
    Step::new(step, Verdict::Fail, since, error.to_string()).kind(kind)
}

/// The timeouts of the instance: its entry's, else the host's.
struct Timeouts {
    start: Duration,
    stop: Duration,
    health: Duration,
}

/// Runs the life cycle and adds its steps to `report`.
pub async fn life_cycle(
    exe: &Path,
    library: Arc<Library>,
    instance: &Instance,
    config: &Config,
    report: &mut Report,
) {
    let name = instance.name.as_str();
    let entry = instance.entry.as_ref();
    let timeouts = Timeouts {
        start: entry
            .and_then(|e| e.start_timeout_ms)
            .unwrap_or(config.host.start_timeout_ms)
            .duration(),
        stop: entry
            .and_then(|e| e.stop_timeout_ms)
            .unwrap_or(config.host.stop_timeout_ms)
            .duration(),
        health: config.host.health_timeout_ms.duration(),
    };
    let mut steps = Steps { report, name };

    let since = Instant::now();
    let mut sockets = Sockets::default();
    let wanted = entry
        .map(|e| {
            e.listen
                .iter()
                .map(|(name, address)| (name.as_str().to_owned(), address.clone()))
                .collect()
        })
        .unwrap_or_default();
    let listeners = match sockets.ensure(name, &wanted) {
        Ok(listeners) => listeners,
        Err(detail) => {
            steps.push(Step::new("process", Verdict::Fail, since, detail).kind("listen"));
            return steps.skip(&RUN_STEPS[1..], "not run: its sockets could not be bound");
        }
    };
    let generation = library.facts.generation;
    let memory = entry.and_then(|e| e.memory_max_bytes).map(|m| m.get());
    let child = match Child::spawn(exe, name, library, memory, &listeners) {
        Ok(child) => child,
        Err(e) => {
            let detail = format!("cannot start the child process: {e}");
            steps.push(Step::new("process", Verdict::Fail, since, detail).kind("spawn"));
            return steps.skip(&RUN_STEPS[1..], "not run: no process");
        }
    };
    let held = if listeners.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = listeners.keys().map(String::as_str).collect();
        format!(", holding its sockets {}", names.join(", "))
    };
    let detail = format!("`balut __isolate {name}`, pid {}{held}", child.pid());
    steps.push(Step::new("process", Verdict::Pass, since, detail));

    let (wake, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let services = HostServices::new(name, generation, 1, wake).with_listeners(listeners);

    let since = Instant::now();
    let constructed = child
        .construct(
            name,
            instance.config_json.clone(),
            &services,
            timeouts.start,
        )
        .await;
    if let Err(e) = constructed {
        steps.push(failed("new", since, &e));
        steps.skip(&RUN_STEPS[2..7], "not called: the constructor failed");
        return finish(child, &timeouts, &mut steps).await;
    }
    steps.pass("new", since, "constructed".into());

    let since = Instant::now();
    let started = child.start(timeouts.start).await;
    match &started {
        Ok(()) => steps.pass("start", since, "started".into()),
        Err(e) => {
            steps.push(failed("start", since, e));
            steps.skip(&RUN_STEPS[3..5], "not called: start failed");
        }
    }
    if started.is_ok() {
        ready(&child, &services, &timeouts, &mut steps).await;
        health(&child, &timeouts, &mut steps).await;
    }
    // As the host: a stop is requested, `stop` called (after a failed start too), then drop.
    services.request_stop();
    let deadline = Instant::now() + timeouts.stop;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    for (step, done) in [("stop", "stopped"), ("drop", "dropped")] {
        if child.has_ended() {
            steps.push(Step::skipped(step, "not called: its process ended"));
            continue;
        }
        let since = Instant::now();
        let result = if step == "stop" {
            child.stop(left()).await
        } else {
            child.dispose(left()).await
        };
        match result {
            Ok(()) => steps.pass(step, since, done.into()),
            Err(e) => steps.push(failed(step, since, &e)),
        }
    }
    // What it reported of its own accord.
    while let Ok(from) = notices.try_recv() {
        for notice in from.take() {
            if let Notice::Failed(reason) = notice {
                let detail = format!("it reported a failure (Context::report_failure): {reason}");
                let step = Step::new("report", Verdict::Fail, Instant::now(), detail);
                steps.push(step.kind("reported_failure"));
            }
        }
    }
    finish(child, &timeouts, &mut steps).await;
    sockets.release_all();
}

/// Every step of a run, in order.
const RUN_STEPS: [&str; 8] = [
    "process", "new", "start", "ready", "health", "stop", "drop", "exit",
];

/// The report, and the instance every step is about.
struct Steps<'a> {
    report: &'a mut Report,
    name: &'a str,
}

impl Steps<'_> {
    fn push(&mut self, step: Step) {
        self.report.push(step.instance(self.name));
    }

    fn pass(&mut self, step: &'static str, since: Instant, detail: String) {
        self.push(Step::new(step, Verdict::Pass, since, detail));
    }

    fn skip(&mut self, steps: &[&'static str], why: &str) {
        for step in steps {
            self.push(Step::skipped(step, why));
        }
    }
}

/// Waits for the instance to be ready: its readiness check (interface 1.1) passing, or,
/// without one, no `Context::set_ready(false)` left standing; within the start timeout.
async fn ready(child: &Child, services: &HostServices, timeouts: &Timeouts, steps: &mut Steps<'_>) {
    let since = Instant::now();
    let deadline = since + timeouts.start;
    loop {
        let not_yet = match child.ready(timeouts.health).await {
            Ok(Some(report)) if report.healthy => {
                return steps.pass("ready", since, "its readiness check passed".into());
            }
            Ok(Some(report)) => report.message,
            Ok(None) if services.reported_readiness() == Some(false) => {
                "it reported itself not ready (Context::set_ready(false))".to_owned()
            }
            Ok(None) => {
                let detail =
                    "ready (it has no readiness check and did not report itself not ready)";
                return steps.pass("ready", since, detail.into());
            }
            Err(e) => return steps.push(failed("ready", since, &e)),
        };
        if Instant::now() + READY_POLL >= deadline {
            let detail = format!(
                "not ready within the start timeout ({} ms): {not_yet}",
                timeouts.start.as_millis()
            );
            return steps.push(Step::new("ready", Verdict::Fail, since, detail).kind("not_ready"));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// One liveness check.
async fn health(child: &Child, timeouts: &Timeouts, steps: &mut Steps<'_>) {
    if child.has_ended() {
        return steps.skip(&["health"], "not called: its process ended");
    }
    let since = Instant::now();
    match child.health(timeouts.health).await {
        Ok(report) if report.healthy => {
            let detail = if report.message.is_empty() {
                "healthy".to_owned()
            } else {
                format!("healthy: {}", report.message)
            };
            steps.pass("health", since, detail);
        }
        Ok(report) => {
            let detail = format!("unhealthy: {}", report.message);
            steps.push(Step::new("health", Verdict::Fail, since, detail).kind("unhealthy"));
        }
        Err(e) => steps.push(failed("health", since, &e)),
    }
}

/// Lets the process end; a process that ends only when killed is a failure.
async fn finish(child: Child, timeouts: &Timeouts, steps: &mut Steps<'_>) {
    let since = Instant::now();
    let already = child.has_ended();
    match child.finish(timeouts.stop.min(KILL_GRACE * 5)).await {
        Ok(()) if already => steps.pass("exit", since, "its process had ended".into()),
        Ok(()) => steps.pass("exit", since, "its process ended".into()),
        Err(e) => steps.push(failed("exit", since, &e)),
    }
}
