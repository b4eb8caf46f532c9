//! `ticker`: an example Balut plugin with a background worker thread.
//!
//! Every `interval_ms` it appends one line, `tick <n> <unix_millis>`, to the file at `path`
//! (creating the file, but not its folder). `health` reports a failed write, or a worker
//! that has fallen behind. `stop` wakes the worker at once and joins it.
//!
//! On a hot reload it hands its tick count to the next version (format version 1: the
//! number of the last tick, a little-endian `u64`), which goes on from the next number
//! ("continuing the tick count" in the log), so `n` never starts again at 1 in the file. A
//! format it does not know fails the constructor (the host then keeps the running version).
//!
//! Config (the `config` table of the container's entry): `path` (required), `interval_ms`
//! (1000; must be more than 0), `fail_file` (none): a path looked at on every tick; when a
//! file is there, the worker removes it and reports a failure
//! (`Context::report_failure`, "failing on request: FILE was there (at unix_us N)", N the
//! time of the report in microseconds since the Unix epoch), so a benchmark or a test can
//! make an instance fail by itself. The looking costs one `unlink` per tick.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use balut_plugin_api::{Container, Context, Error, Handover, Health, Level, export_plugin};
use serde::Deserialize;

/// The format of the state handed over on a hot reload: the last tick's number, a
/// little-endian `u64`.
const STATE_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The file to append to. Its folder must exist.
    path: PathBuf,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    /// When a file is at this path at a tick, it is removed and a failure reported.
    fail_file: Option<PathBuf>,
}

fn default_interval_ms() -> u64 {
    1000
}

/// What the worker last did, shared with `health`.
#[derive(Debug)]
struct Status {
    /// When the last tick was written (when the worker started, before the first one).
    last_ok: Instant,
    /// Why the last write failed, if it did.
    last_error: Option<String>,
    /// Lines written so far.
    written: u64,
    /// The number of the last tick (written or not), counting the instances before this
    /// one: the next tick is one more.
    ticks: u64,
}

/// The running worker: dropping `wake` tells it to stop.
struct Worker {
    wake: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

struct Ticker {
    ctx: Context,
    path: PathBuf,
    interval: Duration,
    fail_file: Option<PathBuf>,
    status: Arc<Mutex<Status>>,
    worker: Option<Worker>,
}

impl Ticker {
    fn new(config: Config, ctx: Context) -> Result<Self, Error> {
        if config.interval_ms == 0 {
            return Err(Error::msg("interval_ms must be more than 0"));
        }
        let ticks = match ctx.take_handover() {
            Some(state) => {
                let ticks = read_ticks(&state)?;
                let count = ticks.to_string();
                ctx.log(
                    Level::Info,
                    "continuing the tick count",
                    &[("ticks", &count)],
                );
                ticks
            }
            None => 0,
        };
        let status = Status {
            last_ok: Instant::now(),
            last_error: None,
            written: 0,
            ticks,
        };
        Ok(Self {
            ctx,
            path: config.path,
            interval: Duration::from_millis(config.interval_ms),
            fail_file: config.fail_file,
            status: Arc::new(Mutex::new(status)),
            worker: None,
        })
    }
}

impl Container for Ticker {
    fn start(&mut self) -> Result<(), Error> {
        if self.worker.is_some() {
            return Ok(());
        }
        lock(&self.status).last_ok = Instant::now();
        let (wake, sleeper) = mpsc::channel();
        let work = Work {
            ctx: self.ctx.clone(),
            path: self.path.clone(),
            interval: self.interval,
            fail_file: self.fail_file.clone(),
            status: Arc::clone(&self.status),
        };
        let thread = thread::Builder::new()
            .name("ticker".into())
            .spawn(move || work.run(&sleeper))?;
        self.worker = Some(Worker { wake, thread });
        let fields = [
            ("path", &*self.path.to_string_lossy()),
            ("interval_ms", &self.interval.as_millis().to_string()),
        ];
        self.ctx.log(Level::Info, "ticking", &fields);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(Worker { wake, thread }) = self.worker.take() else {
            return Ok(());
        };
        // Wakes the worker from its wait: it sees the channel closed and returns.
        drop(wake);
        thread
            .join()
            .map_err(|_| Error::msg("the ticker thread panicked"))?;
        let written = lock(&self.status).written.to_string();
        self.ctx
            .log(Level::Info, "stopped", &[("lines_written", &written)]);
        Ok(())
    }

    fn health(&self) -> Health {
        match &self.worker {
            Some(worker) if !worker.thread.is_finished() => {
                check(&lock(&self.status), self.interval, Instant::now())
            }
            _ => Health::unhealthy("the ticker thread is not running"),
        }
    }

    /// The tick count, for the next version to go on from. Called after `stop`: the
    /// worker has written its last tick.
    fn handover(&mut self) -> Option<Handover> {
        let ticks = lock(&self.status).ticks;
        self.ctx.log(
            Level::Info,
            "handing the tick count over",
            &[("ticks", &ticks.to_string())],
        );
        Some(Handover::new(STATE_VERSION, ticks.to_le_bytes().to_vec()))
    }
}

/// The tick count in state handed over by the previous instance.
fn read_ticks(state: &Handover) -> Result<u64, Error> {
    let bytes = state.expect_version(STATE_VERSION)?;
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
        Error::msg(format!(
            "state handed over in format version {STATE_VERSION} must be 8 bytes (the tick count), not {}",
            bytes.len()
        ))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

impl Drop for Ticker {
    /// A safety net: join the worker even if the host never got to call `stop`.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What the worker thread needs.
struct Work {
    ctx: Context,
    path: PathBuf,
    interval: Duration,
    fail_file: Option<PathBuf>,
    status: Arc<Mutex<Status>>,
}

impl Work {
    /// The worker: one tick per interval until `stop` closes the channel.
    fn run(&self, sleeper: &mpsc::Receiver<()>) {
        let mut wait = Duration::ZERO; // the first tick comes right away
        loop {
            match sleeper.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                // Disconnected: `stop` dropped the sender.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let started = Instant::now();
            self.fail_if_asked();
            self.tick();
            // Keep the pace even when a write is slow.
            wait = self.interval.saturating_sub(started.elapsed());
        }
    }

    /// Reports a failure when the `fail_file` is there (and removes it: one failure per
    /// file).
    fn fail_if_asked(&self) {
        let Some(file) = &self.fail_file else {
            return;
        };
        if std::fs::remove_file(file).is_ok() {
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            self.ctx.report_failure(&format!(
                "failing on request: {} was there (at unix_us {at})",
                file.display()
            ));
        }
    }

    fn tick(&self) {
        let n = lock(&self.status).ticks.saturating_add(1);
        let result = append_tick(&self.path, n, unix_millis());
        let mut status = lock(&self.status);
        status.ticks = n;
        match result {
            Ok(()) => {
                if status.last_error.take().is_some() {
                    self.ctx.info("writing again");
                }
                status.last_ok = Instant::now();
                status.written += 1;
            }
            Err(e) => {
                let reason = format!("cannot append to {}: {e}", self.path.display());
                // Log a failure once, not on every tick.
                if status.last_error.as_ref() != Some(&reason) {
                    self.ctx
                        .log(Level::Warn, "write failed", &[("error", &reason)]);
                }
                status.last_error = Some(reason);
            }
        }
    }
}

/// Appends `tick <n> <unix_millis>` to the file, creating the file if needed.
fn append_tick(path: &Path, n: u64, unix_millis: u128) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    // One write call per line, so lines from ticks never interleave.
    file.write_all(format!("tick {n} {unix_millis}\n").as_bytes())
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The health rule: the last write must have worked, and not be older than 3 intervals.
fn check(status: &Status, interval: Duration, now: Instant) -> Health {
    if let Some(error) = &status.last_error {
        return Health::unhealthy(error.clone());
    }
    let since = now.saturating_duration_since(status.last_ok);
    if since > interval.saturating_mul(3) {
        return Health::unhealthy(format!(
            "falling behind: last tick {}ms ago",
            since.as_millis()
        ));
    }
    Health::Healthy
}

fn lock(status: &Mutex<Status>) -> MutexGuard<'_, Status> {
    // The worker never panics while holding the lock; if it did, the data is still usable.
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

export_plugin!(name: "ticker", version: env!("CARGO_PKG_VERSION"), constructor: Ticker::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_last_write() {
        let interval = Duration::from_millis(100);
        let start = Instant::now();
        let mut status = Status {
            last_ok: start,
            last_error: None,
            written: 0,
            ticks: 0,
        };
        assert_eq!(check(&status, interval, start), Health::Healthy);
        let later = start + Duration::from_millis(300);
        assert_eq!(check(&status, interval, later), Health::Healthy);
        let too_late = start + Duration::from_millis(301);
        assert_eq!(
            check(&status, interval, too_late),
            Health::unhealthy("falling behind: last tick 301ms ago")
        );
        status.last_error = Some("cannot append to /x: denied".into());
        assert_eq!(
            check(&status, interval, start),
            Health::unhealthy("cannot append to /x: denied")
        );
    }

    #[test]
    fn the_tick_count_is_read_from_version_1_only() {
        let state = Handover::new(1, 17u64.to_le_bytes().to_vec());
        assert_eq!(read_ticks(&state).unwrap(), 17);
        let e = read_ticks(&Handover::new(3, vec![0; 8])).unwrap_err();
        assert!(e.message().contains("does not understand"), "{e}");
        let e = read_ticks(&Handover::new(1, Vec::new())).unwrap_err();
        assert!(e.message().contains("must be 8 bytes"), "{e}");
    }

    #[test]
    fn appends_lines_and_needs_the_folder() {
        let dir = std::env::temp_dir().join(format!("balut-ticker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ticks.log");
        append_tick(&file, 1, 1000).unwrap();
        append_tick(&file, 2, 2000).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "tick 1 1000\ntick 2 2000\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = append_tick(&dir.join("ticks.log"), 3, 3000).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// The numbers of the ticks in the file, in order.
    fn ticks_in(file: &Path) -> Vec<u64> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
            .collect()
    }

    /// The life cycle through the export glue: it ticks, stops at once, hands its count
    /// over after stop (a stop-first reload), and the next instance goes on from it.
    #[test]
    fn life_cycle_ticks_and_hands_the_count_to_the_next_instance() {
        use balut_plugin_api::testing::{Lifecycle, Step, TestHost, json};

        let dir = std::env::temp_dir().join(format!("balut-ticker-life-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ticks.log");
        let config = json!({ "path": file, "interval_ms": 10 });
        let report = Lifecycle::new(Ticker::new)
            .host(TestHost::new("ticker"))
            .config(&config)
            .while_running(|running| {
                let three = running
                    .host()
                    .wait_for(Duration::from_secs(10), |_| ticks_in(&file).len() >= 3);
                assert!(three, "{:?}", ticks_in(&file));
                assert_eq!(running.health()?, Health::Healthy);
                Ok(())
            })
            .run();
        report.assert_ok();
        // `stop` wakes the worker at once rather than at the next tick.
        assert!(report.step(Step::Stop).unwrap().took < Duration::from_secs(1));
        let written = ticks_in(&file);
        let state = report.handover().expect("the tick count").clone();
        assert_eq!(read_ticks(&state).unwrap(), *written.last().unwrap());

        let next = TestHost::new("ticker");
        next.set_handover(state);
        let report = Lifecycle::new(Ticker::new)
            .host(next)
            .config(&config)
            .while_running(|running| {
                let more = running.host().wait_for(Duration::from_secs(10), |_| {
                    ticks_in(&file).len() > written.len()
                });
                assert!(more);
                Ok(())
            })
            .run();
        report.assert_ok();
        assert!(report.host().logged("continuing the tick count"));
        let all = ticks_in(&file);
        let expected: Vec<u64> = (1..=all.len() as u64).collect();
        assert_eq!(all, expected, "numbering goes on across instances");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file at `fail_file` makes the running instance report one failure (the file is
    /// removed), with the time of the report in the reason; it goes on ticking.
    #[test]
    fn a_fail_file_makes_it_report_one_failure() {
        use balut_plugin_api::testing::{Lifecycle, json};

        let dir = std::env::temp_dir().join(format!("balut-ticker-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, fail) = (dir.join("ticks.log"), dir.join("fail"));
        let config = json!({ "path": file, "interval_ms": 10, "fail_file": fail });
        let report = Lifecycle::new(Ticker::new)
            .config(&config)
            .while_running(|running| {
                let host = running.host();
                assert!(host.wait_for(Duration::from_secs(10), |_| ticks_in(&file).len() >= 2));
                assert!(host.failures().is_empty());
                std::fs::write(&fail, "").unwrap();
                assert!(host.wait_for(Duration::from_secs(10), |h| !h.failures().is_empty()));
                let ticked = ticks_in(&file).len();
                assert!(
                    host.wait_for(Duration::from_secs(10), |_| ticks_in(&file).len()
                        > ticked + 2)
                );
                let failures = host.failures();
                assert_eq!(failures.len(), 1, "{failures:?}");
                assert!(failures[0].contains("failing on request"), "{failures:?}");
                assert!(failures[0].contains("(at unix_us "), "{failures:?}");
                assert!(!fail.exists());
                Ok(())
            })
            .run();
        report.assert_ok();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn life_cycle_refuses_a_zero_interval_and_reports_a_failed_write() {
        use balut_plugin_api::testing::{Lifecycle, Step, json};

        let report = Lifecycle::new(Ticker::new)
            .config(json!({ "path": "/tmp/x", "interval_ms": 0 }))
            .run();
        let failed = report.failure().unwrap();
        assert_eq!(failed.step, Step::New);
        assert_eq!(failed.error(), Some("interval_ms must be more than 0"));

        let report = Lifecycle::new(Ticker::new)
            .config(json!({ "path": "/nonexistent-balut-dir/ticks.log", "interval_ms": 10 }))
            .while_running(|running| {
                let warned = running
                    .host()
                    .wait_for_log("write failed", Duration::from_secs(10));
                assert_eq!(warned.map(|l| l.level), Some(Level::Warn));
                match running.health()? {
                    Health::Unhealthy(reason) => assert!(reason.contains("cannot append")),
                    Health::Healthy => panic!("healthy after a failed write"),
                }
                Ok(())
            })
            .run();
        // The health step right after start may or may not have seen the first write.
        assert!(report.step(Step::WhileRunning).unwrap().is_ok(), "{report}");
        assert!(report.step(Step::Drop).unwrap().is_ok(), "{report}");
    }
}
