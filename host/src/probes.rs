//! Liveness and readiness probes of one container: when they run, how their results count.
//!
//! One task per live instance runs both probes, one at a time (they never overlap: the
//! next is scheduled a period after the previous one ended). A probe slower than its
//! timeout counts as failed; the task waits for nothing else, so a stuck plugin never
//! blocks the host or other containers. Defaults (docs/CONFIG.md): liveness
//! every 10 s, timeout 2 s, 3 failures, 60 s start-up grace; readiness every 5 s, timeout 2 s.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{ProbeKind, ProbeRecord};
use tokio::time::Instant;

use crate::config::ProbeConfig;
use crate::loader::{CallError, HealthReport};
use crate::platform::Calls;

/// How one probe runs and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    /// Failures within this time after the start do not count.
    pub grace: Duration,
}

impl ProbeSpec {
    pub const LIVENESS: Self = Self {
        period: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        failure_threshold: 3,
        grace: Duration::from_secs(60),
    };
    pub const READINESS: Self = Self {
        period: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        failure_threshold: 1,
        grace: Duration::ZERO,
    };

    /// The spec from config over `default`; `None` when the probe is disabled.
    pub fn from_config(config: &ProbeConfig, default: Self) -> Option<Self> {
        if config.disabled {
            return None;
        }
        Some(Self {
            period: config.period_ms.map_or(default.period, |m| m.duration()),
            timeout: config.timeout_ms.map_or(default.timeout, |m| m.duration()),
            failure_threshold: config
                .failure_threshold
                .unwrap_or(default.failure_threshold)
                .max(1),
            grace: config.grace_ms.map_or(default.grace, Duration::from_millis),
        })
    }
}

/// What a result means for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes.
    Steady,
    /// Liveness failed `failure_threshold` times in a row (or the plugin panicked): act.
    Dead(String),
    /// Readiness changed.
    Ready(bool),
}

/// Consecutive-failure counting for one probe.
#[derive(Debug, Clone)]
pub struct Counter {
    kind: ProbeKind,
    spec: ProbeSpec,
    started: Instant,
    failures: u32,
    ready: Option<bool>,
}

impl Counter {
    pub fn new(kind: ProbeKind, spec: ProbeSpec, started: Instant) -> Self {
        Self {
            kind,
            spec,
            started,
            failures: 0,
            ready: None,
        }
    }

    /// Counts one result at `now`.
    pub fn record(&mut self, ok: bool, message: &str, now: Instant) -> Verdict {
        if ok {
            self.failures = 0;
        } else if now.duration_since(self.started) >= self.spec.grace {
            self.failures += 1;
        }
        let failed = self.failures >= self.spec.failure_threshold;
        match self.kind {
            ProbeKind::Liveness if failed => Verdict::Dead(format!(
                "liveness probe failed {} times in a row: {message}",
                self.failures
            )),
            ProbeKind::Liveness => Verdict::Steady,
            ProbeKind::Readiness => {
                let ready = !failed;
                if self.ready == Some(ready) || (ready && !ok) {
                    Verdict::Steady
                } else {
                    self.ready = Some(ready);
                    Verdict::Ready(ready)
                }
            }
        }
    }
}

/// One probe result with its verdict, sent to the supervisor.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub record: ProbeRecord,
    pub verdict: Verdict,
}

/// Runs the probes of one instance, calling its worker's `health` and `ready`.
pub async fn run_on<W, R>(
    worker: Arc<W>,
    liveness: Option<ProbeSpec>,
    readiness: Option<ProbeSpec>,
    report: impl FnMut(ProbeReport) -> R,
) where
    W: Calls,
    R: Future<Output = bool>,
{
    let check = move |kind, timeout| {
        let worker = worker.clone();
        async move {
            match kind {
                ProbeKind::Liveness => worker.health(timeout).await,
                // A plugin built for interface 1.0 has no readiness check: it is ready.
                ProbeKind::Readiness => worker.ready(timeout).await.map(|report| {
                    report.unwrap_or(HealthReport {
                        healthy: true,
                        message: "no readiness check (interface 1.0 plugin)".into(),
                        duration: Duration::ZERO,
                    })
                }),
            }
        }
    };
    run(check, liveness, readiness, report).await;
}

/// Runs the probes until a liveness verdict ends them or the task is aborted. `check`
/// makes one call with a timeout; `report` hands a result to the supervisor (waiting while
/// it is busy, so no verdict is lost) and returns false when nobody listens any more.
pub async fn run<F, Fut, R>(
    mut check: F,
    liveness: Option<ProbeSpec>,
    readiness: Option<ProbeSpec>,
    mut report: impl FnMut(ProbeReport) -> R,
) where
    F: FnMut(ProbeKind, Duration) -> Fut,
    Fut: Future<Output = Result<HealthReport, CallError>>,
    R: Future<Output = bool>,
{
    let started = Instant::now();
    let mut probes: Vec<(Counter, Instant)> = Vec::new();
    if let Some(spec) = liveness {
        probes.push((
            Counter::new(ProbeKind::Liveness, spec, started),
            started + spec.period,
        ));
    }
    if let Some(spec) = readiness {
        probes.push((
            Counter::new(ProbeKind::Readiness, spec, started),
            started + spec.period,
        ));
    }
    loop {
        let Some(next) = probes
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, due))| *due)
            .map(|(i, _)| i)
        else {
            return;
        };
        tokio::time::sleep_until(probes[next].1).await;
        let (counter, due) = &mut probes[next];
        let began = Instant::now();
        let result = check(counter.kind, counter.spec.timeout).await;
        let ended = Instant::now();
        *due = ended + counter.spec.period;
        let (ok, message, fatal) = match result {
            Ok(report) => (report.healthy, report.message, false),
            Err(e @ CallError::Panicked(_)) => {
                let check = match counter.kind {
                    ProbeKind::Liveness => "health check",
                    ProbeKind::Readiness => "readiness check",
                };
                (false, format!("{check} {e}"), true)
            }
            Err(e @ CallError::Timeout { .. }) => (false, format!("timed out: {e}"), false),
            // An isolated container's process is gone: no later check can pass.
            Err(e @ CallError::Ended(_)) => (false, e.to_string(), true),
            Err(e) => (false, e.to_string(), false),
        };
        let verdict = if fatal {
            Verdict::Dead(message.clone())
        } else {
            counter.record(ok, &message, ended)
        };
        let dead = matches!(verdict, Verdict::Dead(_));
        let record = ProbeRecord {
            probe: counter.kind,
            at: crate::model::rfc3339(SystemTime::now()),
            ok,
            message,
            duration_ms: crate::model::millis(ended.duration_since(began)),
        };
        if !report(ProbeReport { record, verdict }).await || dead {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_needs_threshold_failures_in_a_row_after_grace() {
        let spec = ProbeSpec {
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            grace: Duration::from_secs(10),
        };
        let start = Instant::now();
        let mut c = Counter::new(ProbeKind::Liveness, spec, start);
        // Within the grace window failures do not count.
        for s in 1..10 {
            assert_eq!(
                c.record(false, "x", start + Duration::from_secs(s)),
                Verdict::Steady
            );
        }
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(c.record(false, "x", at(10)), Verdict::Steady);
        assert_eq!(c.record(false, "x", at(11)), Verdict::Steady);
        // A success resets the count.
        assert_eq!(c.record(true, "", at(12)), Verdict::Steady);
        assert_eq!(c.record(false, "x", at(13)), Verdict::Steady);
        assert_eq!(c.record(false, "x", at(14)), Verdict::Steady);
        assert_eq!(
            c.record(false, "boom", at(15)),
            Verdict::Dead("liveness probe failed 3 times in a row: boom".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_reports_changes_only() {
        let spec = ProbeSpec {
            failure_threshold: 2,
            ..ProbeSpec::READINESS
        };
        let start = Instant::now();
        let mut c = Counter::new(ProbeKind::Readiness, spec, start);
        assert_eq!(c.record(true, "", start), Verdict::Ready(true));
        assert_eq!(c.record(true, "", start), Verdict::Steady);
        assert_eq!(c.record(false, "x", start), Verdict::Steady);
        assert_eq!(c.record(false, "x", start), Verdict::Ready(false));
        assert_eq!(c.record(false, "x", start), Verdict::Steady);
        assert_eq!(c.record(true, "", start), Verdict::Ready(true));
    }

    /// A fake plugin: healthy `healthy` times, then each check hangs past any timeout.
    fn fake(
        healthy: u32,
    ) -> impl FnMut(
        ProbeKind,
        Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<HealthReport, CallError>>>> {
        let mut calls = 0;
        move |_kind, timeout| {
            calls += 1;
            let fine = calls <= healthy;
            Box::pin(async move {
                if fine {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(HealthReport {
                        healthy: true,
                        message: String::new(),
                        duration: Duration::from_millis(5),
                    })
                } else {
                    tokio::time::sleep(timeout).await;
                    Err(CallError::Timeout {
                        call: "health",
                        timeout,
                    })
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probes_follow_their_periods_never_overlap_and_timeouts_count_as_failures() {
        let start = Instant::now();
        let liveness = ProbeSpec {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
            grace: Duration::ZERO,
        };
        let readiness = ProbeSpec {
            period: Duration::from_secs(5),
            ..ProbeSpec::READINESS
        };
        let mut seen: Vec<(ProbeKind, Duration, bool, Verdict)> = Vec::new();
        run(fake(3), Some(liveness), Some(readiness), |r| {
            seen.push((
                r.record.probe,
                Instant::now() - start,
                r.record.ok,
                r.verdict,
            ));
            std::future::ready(true)
        })
        .await;
        let ms = Duration::from_millis;
        // Times are when each probe ended; each starts only after the previous one ended.
        let expected = [
            (ProbeKind::Readiness, ms(5_005), true, Verdict::Ready(true)),
            (ProbeKind::Liveness, ms(10_005), true, Verdict::Steady),
            (ProbeKind::Readiness, ms(10_010), true, Verdict::Steady),
            // From here every check times out after 2 s.
            (
                ProbeKind::Readiness,
                ms(17_010),
                false,
                Verdict::Ready(false),
            ),
            (ProbeKind::Liveness, ms(22_005), false, Verdict::Steady),
            (ProbeKind::Readiness, ms(24_010), false, Verdict::Steady),
            (ProbeKind::Readiness, ms(31_010), false, Verdict::Steady),
            (ProbeKind::Liveness, ms(34_005), false, Verdict::Steady),
        ];
        assert_eq!(&seen[..expected.len()], &expected[..], "{seen:#?}");
        let last = seen.last().unwrap();
        assert_eq!(last.0, ProbeKind::Liveness);
        assert!(
            matches!(&last.3, Verdict::Dead(m) if m.contains("3 times")),
            "{last:?}"
        );
    }

    /// The supervisor busy for a minute with a full queue: the probe waits, and the dead
    /// verdict still arrives (it was once dropped by a `try_send`, and the probe task ended,
    /// leaving the container with no liveness checks).
    #[tokio::test(start_paused = true)]
    async fn a_verdict_waits_for_a_busy_supervisor_and_is_never_dropped() {
        let spec = ProbeSpec {
            period: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            failure_threshold: 2,
            grace: Duration::ZERO,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let probe = run(fake(0), Some(spec), None, move |report| {
            let tx = tx.clone();
            async move { tx.send(report).await.is_ok() }
        });
        let busy_supervisor = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let mut verdicts = Vec::new();
            while let Some(report) = rx.recv().await {
                verdicts.push(report.verdict);
            }
            verdicts
        };
        // The probe ends by itself after its dead verdict, which closes the channel.
        let ((), verdicts) = tokio::join!(probe, busy_supervisor);
        assert_eq!(verdicts.len(), 2, "{verdicts:?}");
        assert!(
            matches!(&verdicts[1], Verdict::Dead(m) if m.contains("2 times")),
            "{verdicts:?}"
        );
    }

    #[test]
    fn config_overrides_defaults() {
        let config = ProbeConfig {
            period_ms: Some(crate::config::Millis::try_from(250).unwrap()),
            failure_threshold: Some(0),
            ..ProbeConfig::default()
        };
        let spec = ProbeSpec::from_config(&config, ProbeSpec::LIVENESS).unwrap();
        assert_eq!(spec.period, Duration::from_millis(250));
        assert_eq!(spec.timeout, Duration::from_secs(2));
        assert_eq!(spec.failure_threshold, 1, "a threshold of 0 means 1");
        assert_eq!(spec.grace, Duration::from_secs(60));
        let off = ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        };
        assert_eq!(ProbeSpec::from_config(&off, ProbeSpec::READINESS), None);
    }
}
