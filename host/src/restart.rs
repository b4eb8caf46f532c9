//! When to restart a failed container: policy, backoff with jitter, intensity limit and
//! quarantine. Pure bookkeeping over times handed in, so it is tested deterministically.
//!
//! Defaults (as in docs/CONFIG.md, chosen after systemd, Kubernetes and Docker): first retry at once, then 1 s doubling with
//! +-25 % jitter, capped at 60 s; the count resets after 60 s ready. More than 5 restarts
//! within 60 s puts the container in quarantine, retried every 5 minutes. A manual restart
//! always works and clears the counters.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Whether a container that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After any failure, and after it stopped on its own.
    Always,
    /// After a failure (panic, failed start, failed liveness, reported failure).
    #[default]
    OnFailure,
    /// Never: a failed container stays failed until restarted by hand.
    Never,
}

/// The numbers of the backoff; every one can be set per container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay of the second retry; each later one doubles it.
    pub initial: Duration,
    pub max: Duration,
    /// Fraction of random spread around each delay (0.25 = +-25 %).
    pub jitter: f64,
    /// Ready this long -> the restart count starts again from zero.
    pub reset_after: Duration,
    /// More than this many restarts within `window` -> quarantine.
    pub max_restarts: u32,
    pub window: Duration,
    /// How often a quarantined container is tried again.
    pub quarantine_retry: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.25,
            reset_after: Duration::from_secs(60),
            max_restarts: 5,
            window: Duration::from_secs(60),
            quarantine_retry: Duration::from_secs(300),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start again at this time (state `backoff`, or at once).
    RestartAt(Instant),
    /// Too many restarts: quarantined until this time, then tried again.
    QuarantineUntil(Instant),
    /// The policy says no restart.
    Stay,
}

/// The restart history of one container.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    /// Restarts since the last reset (what the status shows).
    pub count: u32,
    /// Consecutive retries since the container was last ready long enough.
    streak: u32,
    /// When restarts happened, within the intensity window.
    recent: VecDeque<Instant>,
    ready_since: Option<Instant>,
}

impl Restarts {
    /// Decides what follows a failure (`failed` = true) or a clean exit at `now`.
    /// `random` is uniform in [0, 1).
    pub fn after_exit(
        &mut self,
        policy: RestartPolicy,
        failed: bool,
        config: &Backoff,
        now: Instant,
        random: f64,
    ) -> Decision {
        self.settle(config, now);
        self.ready_since = None;
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            return Decision::Stay;
        }
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= config.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= config.max_restarts as usize {
            return Decision::QuarantineUntil(now + config.quarantine_retry);
        }
        let delay = self.delay(config, random);
        self.streak += 1;
        self.count += 1;
        self.recent.push_back(now + delay);
        Decision::RestartAt(now + delay)
    }

    /// The delay before the next retry: none for the first, then `initial` doubling,
    /// spread by the jitter, never above `max`.
    fn delay(&self, config: &Backoff, random: f64) -> Duration {
        if self.streak == 0 {
            return Duration::ZERO;
        }
        let doublings = (self.streak - 1).min(31);
        let base = config
            .initial
            .saturating_mul(1 << doublings)
            .min(config.max);
        let spread = 1.0 + config.jitter * (2.0 * random - 1.0);
        base.mul_f64(spread.max(0.0)).min(config.max)
    }

    /// The container became ready at `now`.
    pub fn on_ready(&mut self, now: Instant) {
        self.ready_since.get_or_insert(now);
    }

    /// The container is no longer ready (it keeps running).
    pub fn on_not_ready(&mut self, config: &Backoff, now: Instant) {
        self.settle(config, now);
        self.ready_since = None;
    }

    /// Resets the counters if the container has been ready for `reset_after`.
    pub fn settle(&mut self, config: &Backoff, now: Instant) {
        if self
            .ready_since
            .is_some_and(|since| now.duration_since(since) >= config.reset_after)
        {
            self.streak = 0;
            self.count = 0;
            self.recent.clear();
        }
    }

    /// A manual restart: everything starts over.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn first_retry_is_immediate_then_doubling_capped() {
        let config = Backoff {
            max_restarts: 100,
            ..Backoff::default()
        };
        let mut r = Restarts::default();
        let mut delays = Vec::new();
        for _ in 0..10 {
            let now = Instant::now();
            match r.after_exit(RestartPolicy::OnFailure, true, &config, now, 0.5) {
                Decision::RestartAt(at) => {
                    delays.push(at - now);
                    tokio::time::advance(at - now).await;
                }
                other => panic!("{other:?}"),
            }
        }
        let expect: Vec<Duration> = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
            .into_iter()
            .map(secs)
            .collect();
        assert_eq!(delays, expect);
        assert_eq!(r.count, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_a_quarter_and_under_the_cap() {
        let config = Backoff {
            max_restarts: 1000,
            ..Backoff::default()
        };
        for random in [0.0, 0.1, 0.5, 0.9, 0.999_999] {
            let mut r = Restarts::default();
            let now = Instant::now();
            let _ = r.after_exit(RestartPolicy::OnFailure, true, &config, now, random);
            for expected_base in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0] {
                let now = Instant::now();
                let Decision::RestartAt(at) =
                    r.after_exit(RestartPolicy::OnFailure, true, &config, now, random)
                else {
                    panic!("expected a restart");
                };
                let delay = (at - now).as_secs_f64();
                assert!(
                    delay >= expected_base * 0.75 - 1e-9,
                    "{delay} < 0.75 * {expected_base}"
                );
                assert!(
                    delay <= (expected_base * 1.25).min(60.0) + 1e-9,
                    "{delay} > 1.25 * {expected_base}"
                );
                tokio::time::advance(at - now).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_five_restarts_in_a_minute_quarantine() {
        let config = Backoff {
            initial: Duration::from_millis(10),
            ..Backoff::default()
        };
        let mut r = Restarts::default();
        for _ in 0..5 {
            let now = Instant::now();
            let Decision::RestartAt(at) =
                r.after_exit(RestartPolicy::Always, true, &config, now, 0.5)
            else {
                panic!("expected a restart");
            };
            tokio::time::advance(at - now).await;
        }
        let now = Instant::now();
        assert_eq!(
            r.after_exit(RestartPolicy::Always, true, &config, now, 0.5),
            Decision::QuarantineUntil(now + Duration::from_secs(300))
        );
        // A manual restart clears everything.
        r.clear();
        assert_eq!(
            r.after_exit(RestartPolicy::Always, true, &config, now, 0.5),
            Decision::RestartAt(now)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_spread_over_more_than_the_window_do_not_quarantine() {
        let config = Backoff {
            initial: Duration::from_secs(20),
            max: Duration::from_secs(20),
            jitter: 0.0,
            ..Backoff::default()
        };
        let mut r = Restarts::default();
        for _ in 0..20 {
            let now = Instant::now();
            let Decision::RestartAt(at) =
                r.after_exit(RestartPolicy::OnFailure, true, &config, now, 0.5)
            else {
                panic!("quarantined although restarts were 20 s apart");
            };
            tokio::time::advance((at - now).max(Duration::from_secs(20))).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_ready_resets_the_backoff() {
        let config = Backoff::default();
        let mut r = Restarts::default();
        for _ in 0..3 {
            let now = Instant::now();
            let Decision::RestartAt(at) =
                r.after_exit(RestartPolicy::OnFailure, true, &config, now, 0.5)
            else {
                panic!("expected a restart");
            };
            tokio::time::advance(at - now).await;
        }
        assert_eq!(r.count, 3);
        r.on_ready(Instant::now());
        tokio::time::advance(Duration::from_secs(59)).await;
        r.settle(&config, Instant::now());
        assert_eq!(r.count, 3, "not yet a minute");
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(
            r.after_exit(RestartPolicy::OnFailure, true, &config, now, 0.5),
            Decision::RestartAt(now),
            "first retry after a reset is immediate again"
        );
        assert_eq!(r.count, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn policies() {
        let config = Backoff::default();
        let now = Instant::now();
        let mut r = Restarts::default();
        assert_eq!(
            r.after_exit(RestartPolicy::Never, true, &config, now, 0.5),
            Decision::Stay
        );
        assert_eq!(
            r.after_exit(RestartPolicy::OnFailure, false, &config, now, 0.5),
            Decision::Stay
        );
        assert_eq!(
            r.after_exit(RestartPolicy::Always, false, &config, now, 0.5),
            Decision::RestartAt(now)
        );
    }
}
