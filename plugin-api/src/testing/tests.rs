use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::*;

/// What a [`Probe`] container should do at each step.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    fail_new: bool,
    fail_start: bool,
    panic_in_health: bool,
    unhealthy: bool,
    /// Say `set_ready(false)` in start, and `set_ready(true)` this much later (never if
    /// `None`).
    ready_after_ms: Option<u64>,
    slow_stop_ms: u64,
    hand_over: Option<u64>,
}

/// A container that records its calls in the log and does what its config says.
struct Probe {
    ctx: Context,
    config: Config,
    readier: Option<JoinHandle<()>>,
    taken: Option<Handover>,
}

impl Probe {
    fn new(config: Config, ctx: Context) -> Result<Self, Error> {
        if config.fail_new {
            return Err(Error::msg("refused to construct"));
        }
        let taken = ctx.take_handover();
        ctx.info("new");
        Ok(Self {
            ctx,
            config,
            readier: None,
            taken,
        })
    }
}

impl Container for Probe {
    fn start(&mut self) -> Result<(), Error> {
        self.ctx.info("start");
        if self.config.fail_start {
            return Err(Error::msg("cannot start"));
        }
        if let Some(ms) = self.config.ready_after_ms {
            self.ctx.set_ready(false);
            let ctx = self.ctx.clone();
            self.readier = Some(thread::spawn(move || {
                thread::sleep(Duration::from_millis(ms));
                ctx.set_ready(true);
            }));
        } else if self.config.ready_after_ms.is_none() && self.ctx.name() == "never-ready" {
            self.ctx.set_ready(false);
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Error> {
        let asked = self.ctx.stop_requested().to_string();
        self.ctx
            .log(Level::Info, "stop", &[("stop_requested", &asked)]);
        thread::sleep(Duration::from_millis(self.config.slow_stop_ms));
        if let Some(readier) = self.readier.take() {
            readier.join().map_err(|_| Error::msg("readier panicked"))?;
        }
        Ok(())
    }

    fn health(&self) -> Health {
        assert!(!self.config.panic_in_health, "health exploded");
        if self.config.unhealthy {
            Health::unhealthy("out of sorts")
        } else {
            Health::Healthy
        }
    }

    fn handover(&mut self) -> Option<Handover> {
        let n = self.config.hand_over?;
        self.ctx.info("handover");
        Some(Handover::new(7, n.to_le_bytes().to_vec()))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.ctx.info("drop");
        if let Some(taken) = &self.taken {
            let bytes = taken.bytes.len().to_string();
            self.ctx
                .log(Level::Debug, "had state", &[("bytes", &bytes)]);
        }
    }
}

fn steps(report: &Report) -> Vec<(Step, bool)> {
    report.steps().iter().map(|s| (s.step, s.is_ok())).collect()
}

fn messages(host: &TestHost) -> Vec<String> {
    host.logs().into_iter().map(|l| l.message).collect()
}

#[test]
fn the_context_reaches_the_test_host() {
    let host = TestHost::quiet("web");
    let ctx = host.context();
    assert_eq!(ctx.name(), "web");
    ctx.log(Level::Warn, "slow", &[("ms", "1200"), ("path", "/")]);
    ctx.info("plain");
    let logs = host.logs();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].level, Level::Warn);
    assert_eq!(logs[0].message, "slow");
    assert_eq!(logs[0].field("ms"), Some("1200"));
    assert_eq!(logs[0].field("path"), Some("/"));
    assert_eq!(logs[0].field("nope"), None);
    assert_eq!(logs[0].to_string(), r#"Warn slow ms="1200" path="/""#);
    assert_eq!(host.find_log("pla").map(|l| l.level), Some(Level::Info));

    assert!(!ctx.stop_requested());
    host.request_stop();
    assert!(ctx.stop_requested());
    assert!(host.stop_requested());

    assert_eq!(host.ready(), None);
    ctx.set_ready(false);
    ctx.set_ready(true);
    assert_eq!(host.ready(), Some(true));
    assert_eq!(host.readiness(), vec![false, true]);

    ctx.report_failure("disk gone");
    ctx.report_finished("import done");
    assert_eq!(host.failures(), vec!["disk gone".to_owned()]);
    assert_eq!(host.finished(), vec!["import done".to_owned()]);
}

#[test]
fn a_held_tcp_listener_is_lent_by_name() {
    let host = TestHost::quiet("web");
    let addr = host.bind_tcp("http").unwrap();
    let ctx = host.context();
    let listener = ctx.listener("http").unwrap().into_tcp().unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);
    // Another handle to the same socket: closing one leaves the host's open.
    drop(ctx.listener("http").unwrap());
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    let e = ctx.listener("https").unwrap_err();
    assert_eq!(
        e.message(),
        "no socket named `https`: the test host holds http"
    );
    assert!(ctx.listener("http").unwrap().into_unix().is_err());
    let e = TestHost::quiet("x").context().listener("http").unwrap_err();
    assert_eq!(
        e.message(),
        "no socket named `http`: the test host holds none"
    );
}

#[test]
fn a_held_unix_listener_is_lent_by_name() {
    let dir = std::env::temp_dir().join(format!("balut-testing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web.sock");
    let _ = std::fs::remove_file(&path);
    let host = TestHost::quiet("web");
    host.bind_unix("api", &path).unwrap();
    let listener = host.context().listener("api").unwrap().into_unix().unwrap();
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    listener.accept().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn handed_over_state_is_taken_once() {
    let host = TestHost::quiet("t");
    let ctx = host.context();
    assert_eq!(ctx.take_handover(), None);
    host.set_handover(Handover::new(2, vec![1, 2, 3]));
    assert_eq!(ctx.take_handover(), Some(Handover::new(2, vec![1, 2, 3])));
    assert_eq!(ctx.take_handover(), None);
}

#[test]
fn wait_for_log_sees_lines_from_other_threads() {
    let host = TestHost::quiet("t");
    let ctx = host.context();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        ctx.info("late line");
    });
    let line = host.wait_for_log("late", Duration::from_secs(10));
    assert_eq!(line.map(|l| l.message), Some("late line".to_owned()));
    writer.join().unwrap();
    assert_eq!(host.wait_for_log("never", Duration::from_millis(20)), None);
}

#[test]
fn a_good_life_cycle_runs_every_step_in_the_host_order() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "hand_over": 41 }))
        .run();
    report.assert_ok();
    assert_eq!(
        steps(&report),
        vec![
            (Step::CheckConfig, true),
            (Step::New, true),
            (Step::Start, true),
            (Step::Ready, true),
            (Step::Health, true),
            (Step::Stop, true),
            (Step::Handover, true),
            (Step::Drop, true),
        ]
    );
    // Without held sockets, the state is taken after stop (a stop-first reload).
    assert_eq!(
        messages(report.host()),
        ["new", "start", "stop", "handover", "drop"]
    );
    // The host asks for a stop before it calls stop.
    let stop = report.host().find_log("stop").unwrap();
    assert_eq!(stop.field("stop_requested"), Some("true"));
    assert_eq!(
        report.handover(),
        Some(&Handover::new(7, 41u64.to_le_bytes().to_vec()))
    );
    assert_eq!(
        report.step(Step::Handover).unwrap().result,
        Ok("8 bytes in format version 7".to_owned())
    );
    let shown = report.to_string();
    assert!(shown.contains("handover"), "{shown}");

    // The next instance takes what this one handed over.
    let next = TestHost::quiet("probe");
    next.set_handover(report.handover().unwrap().clone());
    let report = Lifecycle::new(Probe::new).host(next).run();
    report.assert_ok();
    let had = report.host().find_log("had state").unwrap();
    assert_eq!(had.field("bytes"), Some("8"));
    assert_eq!(
        report.step(Step::Handover).unwrap().result,
        Ok("nothing handed over".to_owned())
    );
}

#[test]
fn with_held_sockets_the_state_is_taken_before_stop() {
    let host = TestHost::quiet("probe");
    host.bind_tcp("http").unwrap();
    let report = Lifecycle::new(Probe::new)
        .host(host)
        .config(json!({ "hand_over": 1 }))
        .run();
    report.assert_ok();
    assert_eq!(
        messages(report.host()),
        ["new", "start", "handover", "stop", "drop"]
    );
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .handover(HandoverAt::Skip)
        .config(json!({ "hand_over": 1 }))
        .run();
    assert!(report.step(Step::Handover).is_none());
    assert_eq!(report.handover(), None);
}

#[test]
fn a_refused_config_stops_before_the_constructor() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "hand_over": "many" }))
        .run();
    assert!(!report.is_ok());
    assert_eq!(steps(&report), vec![(Step::CheckConfig, false)]);
    assert_eq!(
        report.failure().unwrap().error(),
        Some(r#"hand_over: invalid type: string "many", expected u64"#)
    );
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config_json("{,")
        .run();
    assert_eq!(steps(&report), vec![(Step::CheckConfig, false)]);
    assert!(report.host().logs().is_empty());
}

#[test]
fn a_failed_constructor_ends_the_life_cycle() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "fail_new": true }))
        .run();
    assert_eq!(
        steps(&report),
        vec![(Step::CheckConfig, true), (Step::New, false)]
    );
    assert_eq!(
        report.failure().unwrap().error(),
        Some("refused to construct")
    );
}

#[test]
fn a_failed_start_is_stopped_and_dropped_like_the_host_does() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "fail_start": true, "hand_over": 3 }))
        .run();
    assert!(!report.is_ok());
    assert_eq!(
        steps(&report),
        vec![
            (Step::CheckConfig, true),
            (Step::New, true),
            (Step::Start, false),
            (Step::Stop, true),
            (Step::Drop, true),
        ]
    );
    assert_eq!(report.failure().unwrap().error(), Some("cannot start"));
    assert!(report.to_string().contains("FAILED"));
}

#[test]
fn probes_report_panics_and_unhealthy_answers() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "panic_in_health": true }))
        .run();
    let failed = report.failure().unwrap();
    assert_eq!(failed.step, Step::Health);
    assert_eq!(failed.error(), Some("panicked: health exploded"));
    // The container still gets stopped and dropped.
    assert!(report.step(Step::Drop).unwrap().is_ok());

    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "unhealthy": true }))
        .run();
    assert_eq!(
        report.failure().unwrap().error(),
        Some("unhealthy: out of sorts")
    );
}

#[test]
fn ready_waits_for_set_ready_true() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "ready_after_ms": 100 }))
        .run();
    report.assert_ok();
    assert!(report.step(Step::Ready).unwrap().took >= Duration::from_millis(50));
    assert_eq!(report.host().readiness(), vec![false, true]);

    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("never-ready"))
        .timeout(Duration::from_millis(100))
        .run();
    let failed = report.failure().unwrap();
    assert_eq!(failed.step, Step::Ready);
    assert!(
        failed
            .error()
            .unwrap()
            .contains("did not say set_ready(true)"),
        "{failed:?}"
    );
}

#[test]
fn a_call_that_does_not_return_in_time_ends_the_life_cycle() {
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .config(json!({ "slow_stop_ms": 1000 }))
        .timeout(Duration::from_millis(100))
        .run();
    let failed = report.failure().unwrap();
    assert_eq!(failed.step, Step::Stop);
    assert_eq!(failed.error(), Some("did not return within 100ms"));
    assert!(report.step(Step::Drop).is_none());
    assert!(!report.is_ok());
}

#[test]
fn while_running_checks_see_the_running_container() {
    let seen = AtomicBool::new(false);
    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .while_running(|running| {
            assert_eq!(running.health()?, Health::Healthy);
            assert_eq!(running.ready()?, Health::Healthy);
            assert!(running.host().logged("start"));
            assert!(!running.host().stop_requested());
            seen.store(true, Ordering::SeqCst);
            Ok(())
        })
        .run();
    report.assert_ok();
    assert!(seen.load(Ordering::SeqCst));
    assert!(report.step(Step::WhileRunning).unwrap().is_ok());

    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .while_running(|_| Err(Error::msg("wrong answer")))
        .run();
    assert_eq!(report.failure().unwrap().error(), Some("wrong answer"));
    assert!(report.step(Step::Drop).unwrap().is_ok());

    let report = Lifecycle::new(Probe::new)
        .host(TestHost::quiet("probe"))
        .while_running(|_| panic!("assertion in the check"))
        .run();
    assert_eq!(
        report.failure().unwrap().error(),
        Some("panicked: assertion in the check")
    );
    assert_eq!(messages(report.host()), ["new", "start", "stop", "drop"]);
}
