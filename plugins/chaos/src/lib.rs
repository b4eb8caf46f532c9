//! `chaos`: an example Balut plugin that misbehaves on purpose, to exercise the host.
//!
//! Without faults configured it is a healthy, idle container that logs each call. Config
//! (the `config` table of the container's entry; all optional):
//!
//! - `panic_in`: "new", "start", "stop", "health", "ready" or "drop": panics there with
//!   "chaos: panic in CALL".
//! - `hang_in`: "new", "start", "stop", "health", "ready" or "drop": blocks there, for `hang_ms` if
//!   set, else forever.
//! - `hang_ms`: how long `hang_in` blocks.
//! - `fail_start`: `start` returns an error.
//! - `fail_health_after`: `health` is unhealthy after that many checks.
//! - `flap_health_every`: `health` flaps: that many healthy checks, then that many
//!   unhealthy ones ("chaos: flapping ..."), and so on.
//! - `start_delay_ms`: `start` takes this long.
//! - `ready_after_ms`: reports itself not ready in `start`, then ready after this long
//!   (`Context::set_ready`).
//! - `fail_ready_after`: the readiness check fails after that many checks.
//! - `report_failure_after_ms`: reports a failure this long after `start`
//!   (`Context::report_failure`).
//! - `report_failure_every_ms`: reports a failure every this many milliseconds after
//!   `start`, until stopped ("chaos: failure N reported as configured").
//! - `finish_after_ms`: reports its work finished this long after `start`
//!   (`Context::report_finished`, "finished after N ms"), once: the container ends cleanly
//!   of its own accord.
//! - `leak_thread`: `start` spawns a thread that `stop` never joins: it keeps running
//!   (and keeps the library mapped) after the container is gone, which the host must
//!   report as a library it could not unload.
//! - `log_line_bytes`: `start` logs one line with a message this many bytes long.
//!
//! Crashes (each logs a warning first). With the container in the default thread isolation
//! (`isolation = "thread"`) they end the whole host process, which exercises the host's crash
//! reporting. With `isolation = "process"` the container runs in a child process of its own
//! and the crash is contained there: the host stays up, the container fails with the reason
//! (e.g. "killed by signal SIGSEGV") and its restart policy applies.
//!
//! - `exit_in`: calls `std::process::exit(exit_code)` there (`exit_code` defaults to 0).
//! - `abort_in`: calls `std::process::abort()` there (SIGABRT).
//! - `segfault_in`: writes to address 0x8, which is never mapped (SIGSEGV).
//! - `stack_overflow_in`: recurses until the thread's stack overflows (Rust's guard page
//!   handler prints "has overflowed its stack" and aborts the process).
//! - `overflow_stack_in`: the older name of `stack_overflow_in`, still accepted (give only one
//!   of the two).
//! - `alloc_bytes_in`: allocates `alloc_bytes` bytes there (default 1 GiB) and touches every
//!   page, then keeps them until the process ends (logs "allocating", then "allocated"). Under
//!   a memory limit (`memory_max_bytes`, i.e. RLIMIT_AS, in process isolation) the allocation
//!   fails: Rust's allocator prints "memory allocation of N bytes failed" and aborts.

// The one `unsafe` block is the deliberate segfault of `segfault_in`.
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use balut_plugin_api::{Container, Context, Error, Health, Level, export_plugin};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    panic_in: Option<Call>,
    hang_in: Option<Call>,
    hang_ms: Option<u64>,
    fail_start: bool,
    fail_health_after: Option<u32>,
    flap_health_every: Option<u32>,
    start_delay_ms: Option<u64>,
    ready_after_ms: Option<u64>,
    fail_ready_after: Option<u32>,
    report_failure_after_ms: Option<u64>,
    report_failure_every_ms: Option<u64>,
    finish_after_ms: Option<u64>,
    leak_thread: bool,
    log_line_bytes: Option<usize>,
    exit_in: Option<Call>,
    exit_code: i32,
    abort_in: Option<Call>,
    segfault_in: Option<Call>,
    /// Also accepted as `overflow_stack_in`, its older name.
    #[serde(alias = "overflow_stack_in")]
    stack_overflow_in: Option<Call>,
    alloc_bytes_in: Option<Call>,
    alloc_bytes: Option<u64>,
}

/// What `alloc_bytes_in` allocates when `alloc_bytes` is not set: 1 GiB.
const DEFAULT_ALLOC_BYTES: u64 = 1 << 30;

impl Config {
    /// How many bytes `alloc_bytes_in` allocates.
    fn alloc_bytes(&self) -> u64 {
        self.alloc_bytes.unwrap_or(DEFAULT_ALLOC_BYTES)
    }
}

/// A call into the container where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Call {
    New,
    Start,
    Stop,
    Health,
    Ready,
    Drop,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Health => "health",
            Self::Ready => "ready",
            Self::Drop => "drop",
        }
    }
}

struct Chaos {
    ctx: Context,
    config: Config,
    health_checks: AtomicU32,
    ready_checks: AtomicU32,
    /// The thread that reports readiness, a failure or the end of its work later, and how to
    /// wake it.
    reporter: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Chaos {
    fn new(config: Config, ctx: Context) -> Result<Self, Error> {
        ctx.log(
            Level::Info,
            "created",
            &[("config", &format!("{config:?}"))],
        );
        inject(&ctx, &config, Call::New);
        Ok(Self {
            ctx,
            config,
            health_checks: AtomicU32::new(0),
            ready_checks: AtomicU32::new(0),
            reporter: None,
        })
    }
}

impl Container for Chaos {
    fn start(&mut self) -> Result<(), Error> {
        if let Some(ms) = self.config.start_delay_ms {
            self.ctx
                .log(Level::Info, "delaying start", &[("ms", &ms.to_string())]);
            thread::sleep(Duration::from_millis(ms));
        }
        inject(&self.ctx, &self.config, Call::Start);
        if self.config.fail_start {
            return Err(Error::msg("chaos: start failed as configured"));
        }
        if self.config.ready_after_ms.is_some() {
            self.ctx.set_ready(false);
        }
        if self.config.ready_after_ms.is_some()
            || self.config.report_failure_after_ms.is_some()
            || self.config.report_failure_every_ms.is_some()
            || self.config.finish_after_ms.is_some()
        {
            self.reporter = Some(spawn_reporter(&self.ctx, &self.config));
        }
        if self.config.leak_thread {
            leak_thread(&self.ctx);
        }
        if let Some(bytes) = self.config.log_line_bytes {
            self.ctx.info(&long_line(bytes));
        }
        self.ctx.info("started, idling");
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Error> {
        inject(&self.ctx, &self.config, Call::Stop);
        if let Some((wake, reporter)) = self.reporter.take() {
            drop(wake);
            reporter
                .join()
                .map_err(|_| Error::msg("chaos: reporter thread panicked"))?;
        }
        self.ctx.info("stopped");
        Ok(())
    }

    fn ready(&self) -> Health {
        let check = self.ready_checks.fetch_add(1, Ordering::SeqCst) + 1;
        inject(&self.ctx, &self.config, Call::Ready);
        match self.config.fail_ready_after {
            Some(limit) if check > limit => Health::unhealthy(format!(
                "chaos: not ready after {limit} checks as configured"
            )),
            _ => Health::Healthy,
        }
    }

    fn health(&self) -> Health {
        let check = self.health_checks.fetch_add(1, Ordering::SeqCst) + 1;
        self.ctx
            .log(Level::Debug, "health check", &[("n", &check.to_string())]);
        inject(&self.ctx, &self.config, Call::Health);
        match self.config.flap_health_every {
            Some(every) => flapping_health_at(check, every),
            None => health_at(check, self.config.fail_health_after),
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.ctx.info("dropped");
        // Never panic while already unwinding: that would abort the whole process.
        if !thread::panicking() {
            inject(&self.ctx, &self.config, Call::Drop);
        }
    }
}

/// What the reporter thread reports at a configured time after `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Report {
    Ready,
    Failure,
    Finished,
}

/// The reports configured once, in the order they are due: `(ms after start, report)`.
fn timed_reports(config: &Config) -> Vec<(u64, Report)> {
    let mut reports: Vec<(u64, Report)> = Vec::new();
    reports.extend(config.ready_after_ms.map(|ms| (ms, Report::Ready)));
    reports.extend(
        config
            .report_failure_after_ms
            .map(|ms| (ms, Report::Failure)),
    );
    reports.extend(config.finish_after_ms.map(|ms| (ms, Report::Finished)));
    reports.sort();
    reports
}

/// Reports readiness, a failure and/or the end of its work at the configured times, until
/// `stop` hangs up.
fn spawn_reporter(ctx: &Context, config: &Config) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (wake, hung_up) = mpsc::channel::<()>();
    let ctx = ctx.clone();
    let reports = timed_reports(config);
    let every = config.report_failure_every_ms;
    let reporter = thread::spawn(move || {
        let started = Instant::now();
        for (ms, report) in reports {
            let left = Duration::from_millis(ms).saturating_sub(started.elapsed());
            if hung_up.recv_timeout(left) != Err(mpsc::RecvTimeoutError::Timeout) {
                return; // `stop` hung up.
            }
            match report {
                Report::Ready => {
                    ctx.info("ready now");
                    ctx.set_ready(true);
                }
                Report::Failure => ctx.report_failure("chaos: failure reported as configured"),
                Report::Finished => ctx.report_finished(&format!("finished after {ms} ms")),
            }
        }
        let Some(every) = every else { return };
        let mut n = 0u64;
        while hung_up.recv_timeout(Duration::from_millis(every))
            == Err(mpsc::RecvTimeoutError::Timeout)
        {
            n += 1;
            ctx.report_failure(&format!(
                "chaos: failure {n} reported as configured (every {every} ms)"
            ));
        }
    });
    (wake, reporter)
}

/// Spawns a thread nobody joins: it idles until the process ends.
fn leak_thread(ctx: &Context) {
    ctx.log(Level::Warn, "leaking a thread", &[]);
    thread::spawn(|| {
        loop {
            thread::sleep(Duration::from_millis(100));
        }
    });
}

/// A log message `bytes` long: a prefix, then `x`s.
fn long_line(bytes: usize) -> String {
    let mut line = String::from("long line: ");
    line.extend(std::iter::repeat_n('x', bytes.saturating_sub(line.len())));
    line.truncate(bytes);
    line
}

/// Hangs, panics or crashes if the config asks for it in `call`.
fn inject(ctx: &Context, config: &Config, call: Call) {
    if config.hang_in == Some(call) {
        hang(ctx, call, config.hang_ms);
    }
    if config.panic_in == Some(call) {
        ctx.log(Level::Warn, "panicking", &[("in", call.name())]);
        panic!("chaos: panic in {}", call.name());
    }
    let crash = |how: &str| ctx.log(Level::Warn, how, &[("in", call.name())]);
    if config.exit_in == Some(call) {
        crash("calling exit");
        std::process::exit(config.exit_code);
    }
    if config.abort_in == Some(call) {
        crash("aborting");
        std::process::abort();
    }
    if config.segfault_in == Some(call) {
        crash("segfaulting");
        segfault();
    }
    if config.stack_overflow_in == Some(call) {
        crash("overflowing the stack");
        let depth = overflow_stack(0);
        ctx.log(
            Level::Error,
            "the stack did not overflow",
            &[("depth", &depth.to_string())],
        );
    }
    if config.alloc_bytes_in == Some(call) {
        alloc_and_keep(ctx, call, config.alloc_bytes());
    }
}

/// Allocates `bytes` bytes, touches every page and keeps them until the process ends. If the
/// allocation fails (a memory limit), Rust's allocator aborts the process.
fn alloc_and_keep(ctx: &Context, call: Call, bytes: u64) {
    let size = bytes.to_string();
    ctx.log(
        Level::Warn,
        "allocating",
        &[("in", call.name()), ("bytes", &size)],
    );
    let Ok(len) = usize::try_from(bytes) else {
        ctx.log(
            Level::Error,
            "cannot allocate more than the address space",
            &[("bytes", &size)],
        );
        return;
    };
    // Kept alive on purpose: the memory stays resident until the process ends.
    let kept: &'static mut [u8] = touched(len).leak();
    std::hint::black_box(kept);
    ctx.log(
        Level::Warn,
        "allocated",
        &[("in", call.name()), ("bytes", &size)],
    );
}

/// `len` bytes, every page of them written.
fn touched(len: usize) -> Vec<u8> {
    // Filling with a non-zero byte writes every page (a zeroed allocation could stay lazy).
    let mut memory = vec![1u8; len];
    for at in (0..len).step_by(4096) {
        memory[at] = std::hint::black_box(2);
    }
    std::hint::black_box(memory)
}

/// Crashes the process with SIGSEGV, as a plugin with a memory bug would.
#[allow(unsafe_code)]
fn segfault() {
    // SAFETY: none, on purpose: this deliberately crashes. Address 0x8 is in the first page,
    // which is never mapped (below vm.mmap_min_addr), so the write faults with SIGSEGV; the
    // volatile write cannot be optimized away.
    unsafe { std::ptr::write_volatile(std::ptr::without_provenance_mut::<u8>(8), 1) };
}

/// Recurses with a 512-byte frame until the thread's stack overflows (it never returns in
/// practice: `depth` cannot reach `u64::MAX`).
fn overflow_stack(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return frame[0];
    }
    overflow_stack(depth + 1).wrapping_add(std::hint::black_box(frame)[1])
}

/// Blocks for `hang_ms`, or forever. Sleeps in short steps, like a busy call would.
fn hang(ctx: &Context, call: Call, hang_ms: Option<u64>) {
    let ms = hang_ms.map_or_else(|| "forever".to_owned(), |ms| ms.to_string());
    ctx.log(Level::Warn, "hanging", &[("in", call.name()), ("ms", &ms)]);
    let started = Instant::now();
    while hang_ms.is_none_or(|ms| started.elapsed() < Duration::from_millis(ms)) {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Healthy for the first `fail_after` checks, unhealthy from then on.
fn health_at(check: u32, fail_after: Option<u32>) -> Health {
    match fail_after {
        Some(limit) if check > limit => Health::unhealthy(format!(
            "chaos: unhealthy after {limit} checks as configured"
        )),
        _ => Health::Healthy,
    }
}

/// Flapping: `every` healthy checks, then `every` unhealthy ones, and so on.
fn flapping_health_at(check: u32, every: u32) -> Health {
    let every = every.max(1);
    if ((check - 1) / every) % 2 == 0 {
        Health::Healthy
    } else {
        Health::unhealthy(format!(
            "chaos: flapping, unhealthy for {every} of every {} checks as configured",
            2 * every
        ))
    }
}

export_plugin!(name: "chaos", version: env!("CARGO_PKG_VERSION"), constructor: Chaos::new);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn parses_faults() {
        let none = parse("{}").unwrap();
        assert_eq!(
            (none.panic_in, none.hang_in, none.fail_start),
            (None, None, false)
        );

        let config = parse(
            r#"{"panic_in": "drop", "hang_in": "stop", "hang_ms": 50, "fail_start": true,
                "fail_health_after": 3, "start_delay_ms": 10}"#,
        )
        .unwrap();
        assert_eq!(config.panic_in, Some(Call::Drop));
        assert_eq!(config.hang_in, Some(Call::Stop));
        assert_eq!(config.hang_ms, Some(50));
        assert!(config.fail_start);
        assert_eq!(config.fail_health_after, Some(3));
        assert_eq!(config.start_delay_ms, Some(10));
    }

    #[test]
    fn rejects_unknown_faults() {
        assert!(parse(r#"{"panic_in": "later"}"#).is_err());
        assert!(parse(r#"{"panic_in": "Start"}"#).is_err());
        assert!(parse(r#"{"hang_in": "later"}"#).is_err());
        assert!(parse(r#"{"explode": true}"#).is_err());
    }

    #[test]
    fn turns_unhealthy_after_the_configured_checks() {
        assert_eq!(health_at(1_000, None), Health::Healthy);
        assert_eq!(health_at(2, Some(2)), Health::Healthy);
        assert!(matches!(health_at(3, Some(2)), Health::Unhealthy(_)));
        assert!(matches!(health_at(1, Some(0)), Health::Unhealthy(_)));
    }

    #[test]
    fn flaps_in_runs_of_the_configured_length() {
        let healthy: Vec<bool> = (1..=8)
            .map(|n| flapping_health_at(n, 2) == Health::Healthy)
            .collect();
        assert_eq!(
            healthy,
            [true, true, false, false, true, true, false, false]
        );
        assert_eq!(flapping_health_at(1, 0), Health::Healthy);
    }

    #[test]
    fn long_lines_have_the_asked_length() {
        assert_eq!(long_line(100).len(), 100);
        assert!(long_line(100).starts_with("long line: x"));
        assert_eq!(long_line(3), "lon");
    }

    #[test]
    fn parses_the_newer_knobs() {
        let config = parse(
            r#"{"panic_in": "ready", "hang_in": "ready", "flap_health_every": 1,
                "report_failure_every_ms": 100, "leak_thread": true, "log_line_bytes": 10}"#,
        )
        .unwrap();
        assert_eq!(config.panic_in, Some(Call::Ready));
        assert_eq!(config.hang_in, Some(Call::Ready));
        assert_eq!(config.flap_health_every, Some(1));
        assert_eq!(config.report_failure_every_ms, Some(100));
        assert!(config.leak_thread);
        assert_eq!(config.log_line_bytes, Some(10));
    }

    #[test]
    fn parses_the_crashes() {
        let config = parse(
            r#"{"exit_in": "start", "exit_code": 3, "abort_in": "stop", "segfault_in": "health",
                "overflow_stack_in": "drop"}"#,
        )
        .unwrap();
        assert_eq!(config.exit_in, Some(Call::Start));
        assert_eq!(config.exit_code, 3);
        assert_eq!(config.abort_in, Some(Call::Stop));
        assert_eq!(config.segfault_in, Some(Call::Health));
        assert_eq!(config.stack_overflow_in, Some(Call::Drop));
        let none = parse("{}").unwrap();
        assert_eq!(
            (
                none.exit_in,
                none.exit_code,
                none.abort_in,
                none.segfault_in
            ),
            (None, 0, None, None)
        );
        assert!(parse(r#"{"segfault_in": "later"}"#).is_err());
    }

    #[test]
    fn parses_the_stack_overflow_under_both_names() {
        let config = parse(r#"{"stack_overflow_in": "start"}"#).unwrap();
        assert_eq!(config.stack_overflow_in, Some(Call::Start));
        let config = parse(r#"{"overflow_stack_in": "health"}"#).unwrap();
        assert_eq!(config.stack_overflow_in, Some(Call::Health));
        assert_eq!(parse("{}").unwrap().stack_overflow_in, None);
        assert!(parse(r#"{"stack_overflow_in": "later"}"#).is_err());
    }

    #[test]
    fn parses_the_allocation() {
        let config = parse(r#"{"alloc_bytes_in": "start"}"#).unwrap();
        assert_eq!(config.alloc_bytes_in, Some(Call::Start));
        assert_eq!(config.alloc_bytes(), 1_073_741_824);
        let config = parse(r#"{"alloc_bytes_in": "health", "alloc_bytes": 4096}"#).unwrap();
        assert_eq!(config.alloc_bytes_in, Some(Call::Health));
        assert_eq!(config.alloc_bytes(), 4096);
        let none = parse("{}").unwrap();
        assert_eq!(none.alloc_bytes_in, None);
        assert_eq!(none.alloc_bytes(), DEFAULT_ALLOC_BYTES);
        assert!(parse(r#"{"alloc_bytes_in": "later"}"#).is_err());
        assert!(parse(r#"{"alloc_bytes": -1}"#).is_err());
        assert!(parse(r#"{"alloc_bytes": "1G"}"#).is_err());
    }

    #[test]
    fn touches_every_page() {
        let memory = touched(3 * 4096 + 1);
        assert_eq!(memory.len(), 3 * 4096 + 1);
        let written: Vec<usize> = (0..memory.len()).filter(|&at| memory[at] == 2).collect();
        assert_eq!(written, [0, 4096, 2 * 4096, 3 * 4096]);
        assert!(touched(0).is_empty());
    }

    #[test]
    fn reports_are_due_in_time_order() {
        let config = parse(
            r#"{"finish_after_ms": 300, "ready_after_ms": 100, "report_failure_after_ms": 200}"#,
        )
        .unwrap();
        assert_eq!(config.finish_after_ms, Some(300));
        assert_eq!(
            timed_reports(&config),
            [
                (100, Report::Ready),
                (200, Report::Failure),
                (300, Report::Finished)
            ]
        );
        assert_eq!(
            timed_reports(&parse(r#"{"finish_after_ms": 0}"#).unwrap()),
            [(0, Report::Finished)]
        );
        assert!(timed_reports(&Config::default()).is_empty());
    }

    /// Every fault shows in the life cycle step it hits, through the same glue the host
    /// calls: a panic is caught there and reported with its message.
    #[test]
    fn faults_show_in_the_step_they_hit() {
        use balut_plugin_api::testing::{Lifecycle, Step, json};

        let calm = Lifecycle::new(Chaos::new).run();
        calm.assert_ok();
        let said: Vec<String> = calm.host().logs().into_iter().map(|l| l.message).collect();
        assert_eq!(
            said,
            [
                "created",
                "started, idling",
                "health check",
                "stopped",
                "dropped"
            ]
        );

        let failing = |config, step: Step, error: &str| {
            let report = Lifecycle::new(Chaos::new).config(config).run();
            let failed = report
                .failure()
                .unwrap_or_else(|| panic!("no failure:\n{report}"));
            assert_eq!(failed.step, step, "{report}");
            assert_eq!(failed.error(), Some(error), "{report}");
            report
        };
        failing(
            json!({ "panic_in": "new" }),
            Step::New,
            "panicked: chaos: panic in new",
        );
        let report = failing(
            json!({ "panic_in": "start" }),
            Step::Start,
            "panicked: chaos: panic in start",
        );
        // A failed start is stopped and dropped, as the host does.
        assert!(report.step(Step::Drop).unwrap().is_ok());
        failing(
            json!({ "fail_start": true }),
            Step::Start,
            "chaos: start failed as configured",
        );
        failing(
            json!({ "fail_health_after": 0 }),
            Step::Health,
            "unhealthy: chaos: unhealthy after 0 checks as configured",
        );
        failing(
            json!({ "fail_ready_after": 0 }),
            Step::Ready,
            "unhealthy: chaos: not ready after 0 checks as configured",
        );
        failing(
            json!({ "panic_in": "stop" }),
            Step::Stop,
            "panicked: chaos: panic in stop",
        );
        failing(
            json!({ "panic_in": "drop" }),
            Step::Drop,
            "panicked: chaos: panic in drop",
        );
        let report = Lifecycle::new(Chaos::new)
            .config(json!({ "pannic_in": "drop" }))
            .run();
        let failed = report.failure().unwrap();
        assert_eq!(failed.step, Step::CheckConfig);
        assert!(
            failed
                .error()
                .unwrap()
                .starts_with("pannic_in: unknown field")
        );
    }

    #[test]
    fn reports_readiness_failures_and_finishes_to_the_host() {
        use balut_plugin_api::testing::{Lifecycle, Step, json};

        let report = Lifecycle::new(Chaos::new)
            .config(json!({ "ready_after_ms": 30, "finish_after_ms": 40 }))
            .while_running(|running| {
                let host = running.host();
                assert!(host.wait_for(Duration::from_secs(10), |h| !h.finished().is_empty()));
                Ok(())
            })
            .run();
        report.assert_ok();
        assert_eq!(report.host().readiness(), [false, true]);
        assert!(report.step(Step::Ready).unwrap().took >= Duration::from_millis(20));
        assert_eq!(report.host().finished(), ["finished after 40 ms"]);

        let report = Lifecycle::new(Chaos::new)
            .config(json!({ "report_failure_after_ms": 10 }))
            .while_running(|running| {
                let host = running.host();
                assert!(host.wait_for(Duration::from_secs(10), |h| !h.failures().is_empty()));
                Ok(())
            })
            .run();
        report.assert_ok();
        assert_eq!(
            report.host().failures(),
            ["chaos: failure reported as configured"]
        );
    }

    #[test]
    fn a_hang_past_the_timeout_ends_the_life_cycle() {
        use balut_plugin_api::testing::{Lifecycle, Step, json};

        let report = Lifecycle::new(Chaos::new)
            .config(json!({ "hang_in": "stop", "hang_ms": 500 }))
            .timeout(Duration::from_millis(100))
            .run();
        let failed = report.failure().unwrap();
        assert_eq!(failed.step, Step::Stop);
        assert_eq!(failed.error(), Some("did not return within 100ms"));
        assert!(report.step(Step::Drop).is_none());
    }
}
