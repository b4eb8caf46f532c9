//! The supervisor's deterministic simulation, in the manner of FoundationDB's and
//! TigerBeetle's: the real supervisor, driven on tokio's paused clock against a fake world
//! (`fake.rs`), through seeded random sequences of file adds, replaces (same plugin, other
//! plugin, broken bytes), removes and renames; config reloads (random valid configs,
//! dependencies declared in any order, host settings changed, configs the plugin refuses);
//! start, stop and restart requests; plugin faults (errors, panics and hangs in every
//! call, failing health, reported failures and finishes, readiness flapping); and a final
//! SIGTERM. After every step the invariants in `invariants.rs` are checked. A failure
//! names its seed and the steps so far; `BALUT_SIM_SEED=<seed>` replays exactly that one.
//!
//! `cargo test` runs [`DEFAULT_SEQUENCES`]; `BALUT_SIM_SEQUENCES=100000` runs more.

mod fake;
mod invariants;
mod script;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::set::Hold;
use super::{Outcome, Settings, Supervisor, SupervisorHandle};
use crate::config::Config;
use crate::model::{ContainerStatus, NotUnloaded, PluginStatus};
use crate::platform::{Generation, Platform};
use crate::restart::RestartPolicy;
use crate::status::Board;

use fake::{FakePlatform, SharedWorld, lock};
use invariants::{Checker, Reached};
use script::{Action, Script};

/// Sequences `cargo test` runs.
pub const DEFAULT_SEQUENCES: u64 = 1_000;
/// Steps per sequence.
pub const STEPS: usize = 60;

/// One container as the supervisor owns it.
#[derive(Debug, Clone)]
pub struct SeenContainer {
    pub status: ContainerStatus,
    /// The generation (file, number) its live instance runs.
    pub live: Option<(String, u64)>,
    pub hold: Hold,
    pub wanted: bool,
    pub policy: RestartPolicy,
    pub requires: Vec<String>,
    pub ready: bool,
}

/// The supervisor's own state, for the invariants.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    pub containers: Vec<SeenContainer>,
    pub plugins: Vec<PluginStatus>,
    pub not_unloaded: Vec<NotUnloaded>,
    /// Every generation it holds: (file, generation).
    pub in_memory: Vec<(String, u64)>,
    /// The board, read at the same moment.
    pub board: crate::model::Snapshot,
    /// The starts since the last inspection, with whether each requirement was ready.
    pub starts: Vec<(String, Vec<(String, bool)>)>,
}

impl<P: Platform> Supervisor<P> {
    /// Notes that `name` is being started, and whether what it requires runs and is ready.
    pub(in crate::supervisor) fn record_start(&mut self, name: &str) {
        let requires = self
            .containers
            .get(name)
            .map(|c| c.spec.requires.clone())
            .unwrap_or_default();
        let ready = requires
            .into_iter()
            .map(|r| {
                let ok = self
                    .containers
                    .get(&r)
                    .is_some_and(|c| c.is_live() && c.ready);
                (r, ok)
            })
            .collect();
        self.starts.push((name.to_owned(), ready));
    }

    pub(in crate::supervisor) fn inspect(&mut self) -> Inspection {
        let mut plugins: Vec<PluginStatus> = self
            .files
            .paths()
            .iter()
            .filter_map(|p| self.files.record(p))
            .map(|r| r.status().clone())
            .filter(|s| !s.file.is_empty())
            .collect();
        plugins.sort_by(|a, b| a.file.cmp(&b.file));
        Inspection {
            containers: self
                .containers
                .iter()
                .map(|c| SeenContainer {
                    status: c.status().clone(),
                    live: c.instance.as_ref().map(|i| {
                        let library = crate::platform::Calls::library(&*i.worker);
                        (
                            crate::platform::file_name(library.file()),
                            library.generation(),
                        )
                    }),
                    hold: c.hold,
                    wanted: c.wanted,
                    policy: c.spec.policy,
                    requires: c.spec.requires.clone(),
                    ready: c.ready,
                })
                .collect(),
            plugins,
            not_unloaded: self.files.not_unloaded().to_vec(),
            in_memory: self
                .files
                .in_memory()
                .map(|l| (crate::platform::file_name(l.file()), l.generation()))
                .collect(),
            board: self.board.read().clone(),
            starts: std::mem::take(&mut self.starts),
        }
    }
}

const PLUGIN_DIR: &str = "/sim/plugins";

fn plugin_path(name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(name)
}

/// Runs one sequence; `Err` names the seed, the step and the broken invariant.
pub fn run_sequence(seed: u64, steps: usize) -> Result<Reached, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    let folder = tempfile::tempdir().map_err(|e| e.to_string())?;
    let result = runtime.block_on(sequence(seed, steps, folder.path()));
    result.map_err(|(step, log, why)| {
        format!(
            "simulation seed {seed} failed at step {step}: {why}\n  replay: BALUT_SIM_SEED={seed} cargo test -p balut sim::\n  steps:\n    {}",
            log.join("\n    ")
        )
    })
}

type Failure = (usize, Vec<String>, String);

async fn sequence(seed: u64, steps: usize, folder: &Path) -> Result<Reached, Failure> {
    let mut script = Script::new(seed);
    let config_path = folder.join("balut.toml");
    let text = script.config_text();
    let fail0 = |why: String| (0, Vec::new(), why);
    std::fs::write(&config_path, &text).map_err(|e| fail0(e.to_string()))?;
    let config =
        Config::parse(&text).map_err(|e| fail0(format!("generated config: {e}\n{text}")))?;
    let world = SharedWorld::default();
    for (name, file) in script.initial_files() {
        lock(&world).put(&plugin_path(&name), file);
    }
    let board = Board::default();
    let settings = Settings {
        plugin_dir: PathBuf::from(PLUGIN_DIR),
        config,
        config_path: Some(config_path.clone()),
        strict_modes: false,
    };
    let platform = FakePlatform {
        world: world.clone(),
    };
    let mut supervisor = Supervisor::new(settings, board.clone(), platform, seed);
    let handle = supervisor.handle();
    let mut log = vec![format!("start with config:\n{text}")];
    let _ = supervisor.start_all().await;
    let task = tokio::spawn(supervisor.run());
    let mut checker = Checker::default();
    let check = |checker: &mut Checker, step, log: &Vec<String>, seen: Option<(Inspection, _)>| {
        let Some((seen, resume)) = seen else {
            return Err((
                step,
                log.clone(),
                "the supervisor is gone (it panicked?)".into(),
            ));
        };
        let checked = checker
            .after_step(&seen, &lock(&world))
            .map_err(|why| (step, log.clone(), why));
        drop::<tokio::sync::oneshot::Sender<()>>(resume);
        checked
    };
    let first = handle.inspect().await;
    check(&mut checker, 0, &log, first)?;
    for step in 1..=steps {
        let action = script.next_action(&checker.names());
        log.push(format!("{step}: {action:?}"));
        apply(&action, &handle, &world, &config_path).await;
        let pause = script.pause();
        tokio::time::sleep(pause).await;
        let seen = handle.inspect().await;
        check(&mut checker, step, &log, seen)?;
    }
    // SIGTERM, sometimes while a request is in flight (a start, a reload).
    let last_action = script.next_action(&checker.names());
    let in_flight = std::time::Duration::from_millis(script.pause().as_millis() as u64 % 50);
    log.push(format!("{last_action:?} then SIGTERM after {in_flight:?}"));
    let pending = {
        let (handle, world, config) = (handle.clone(), world.clone(), config_path.clone());
        tokio::spawn(async move { apply(&last_action, &handle, &world, &config).await })
    };
    tokio::time::sleep(in_flight).await;
    let stops_before = lock(&world).stops.len();
    handle.begin_shutdown();
    let outcome = task.await;
    let _ = pending.await;
    let last = steps + 1;
    match outcome {
        Ok(Outcome::Stopped(report)) => {
            let stops = lock(&world).stops[stops_before..].to_vec();
            // What each container required when it was stopped: the board's last word.
            let requires = board
                .read()
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.requires.clone()))
                .collect();
            checker
                .after_shutdown(&report, &stops, requires, &lock(&world))
                .map_err(|why| (last, log.clone(), why))?;
            Ok(checker.reached)
        }
        Ok(Outcome::Panicked(panic)) => Err((last, log, format!("panicked: {panic}"))),
        Err(e) => Err((last, log, format!("the task failed: {e}"))),
    }
}

async fn apply(action: &Action, handle: &SupervisorHandle, world: &SharedWorld, config: &Path) {
    match action {
        Action::Put { file, content } => lock(world).put(&plugin_path(file), content.clone()),
        Action::Remove { file } => lock(world).remove(&plugin_path(file)),
        Action::Rename { from, to } => lock(world).rename(&plugin_path(from), &plugin_path(to)),
        Action::Reload { text } => {
            // A config the parser refuses is refused whole; either way nothing panics.
            let _ = std::fs::write(config, text);
            let _ = handle.reload().await;
        }
        Action::Start(name) => {
            let _ = handle.start(name).await;
        }
        Action::Stop(name) => {
            let _ = handle.stop(name).await;
        }
        Action::Restart(name) => {
            let _ = handle.restart(name).await;
        }
        Action::ReportFailure(name) => {
            let context = lock(world).contexts.get(name).cloned();
            if let Some(context) = context {
                context.report_failure("simulated failure");
            }
        }
        Action::ProcessEnded(name) => {
            let (context, ended) = {
                let world = lock(world);
                (
                    world.contexts.get(name).cloned(),
                    world.processes.get(name).cloned(),
                )
            };
            if let (Some(context), Some(ended)) = (context, ended) {
                ended.store(true, std::sync::atomic::Ordering::SeqCst);
                context.report_ended("killed by signal SIGSEGV (simulated)");
            }
        }
        Action::ReportFinished(name) => {
            let context = lock(world).contexts.get(name).cloned();
            if let Some(context) = context {
                context.report_finished("simulated finish");
            }
        }
        Action::ReportReady(name, ready) => {
            let context = lock(world).contexts.get(name).cloned();
            if let Some(context) = context {
                context.report_ready(*ready);
            }
        }
        Action::Sick(plugin, sick) => {
            let mut world = lock(world);
            if *sick {
                world.sick.insert(plugin.clone());
            } else {
                world.sick.remove(plugin);
            }
        }
        Action::Wait => {}
    }
}

/// The seeds to run: `BALUT_SIM_SEED` for one, else `BALUT_SIM_SEQUENCES` (or the
/// default) from `BALUT_SIM_FIRST_SEED` (or 0).
fn seeds() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = var("BALUT_SIM_SEED") {
        // Replaying one sequence: show the supervisor's log too.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("balut=info")
            .try_init();
        return seed..seed + 1;
    }
    let first = var("BALUT_SIM_FIRST_SEED").unwrap_or(0);
    first..first + var("BALUT_SIM_SEQUENCES").unwrap_or(DEFAULT_SEQUENCES)
}

#[test]
fn simulation_keeps_every_invariant() {
    let started = std::time::Instant::now();
    let seeds = seeds();
    let count = seeds.end - seeds.start;
    // Sequences are independent: spread them over the cores, each with its own runtime.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let results: Vec<Result<Reached, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    let mut reached = Reached::default();
                    for seed in seeds.filter(|s| s % workers == worker) {
                        reached.add(run_sequence(seed, STEPS)?);
                    }
                    Ok(reached)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect()
    });
    let mut reached = Reached::default();
    for result in results {
        match result {
            Ok(r) => reached.add(r),
            Err(failure) => panic!("{failure}"),
        }
    }
    eprintln!(
        "simulation: {count} sequences of {STEPS} steps in {:.1} s; container-steps reached: {reached:?}",
        started.elapsed().as_secs_f64()
    );
    if count >= 100 {
        // A run that never got anywhere proves nothing.
        assert!(
            reached.running > 0 && reached.backoff > 0 && reached.waiting > 0,
            "{reached:?}"
        );
        assert!(
            reached.rolled_back > 0 && reached.bad_config > 0 && reached.quarantined > 0,
            "{reached:?}"
        );
    }
}

#[test]
fn a_supervisor_panic_is_a_failure_not_a_clean_stop() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let world = SharedWorld::default();
        let mut recipe = fake::Recipe {
            plugin: "alpha".into(),
            ..fake::Recipe::default()
        };
        lock(&world).put(&plugin_path("a.so"), fake::FakeFile::Plugin(recipe.clone()));
        let board = Board::default();
        let settings = Settings {
            plugin_dir: PathBuf::from(PLUGIN_DIR),
            config: Config::default(),
            config_path: None,
            strict_modes: false,
        };
        let platform = FakePlatform {
            world: world.clone(),
        };
        let mut supervisor = Supervisor::new(settings, board.clone(), platform, 1);
        let handle = supervisor.handle();
        supervisor.start_all().await.expect("the fake folder lists");
        let task = tokio::spawn(supervisor.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(handle.restart("alpha").await.is_ok());
        // The next load panics inside the supervisor.
        lock(&world).panic_on_load = true;
        recipe.version = 2;
        lock(&world).put(&plugin_path("a.so"), fake::FakeFile::Plugin(recipe));
        let outcome = task.await.expect("the panic is caught inside the task");
        match outcome {
            Outcome::Panicked(message) => assert!(message.contains("simulated bug"), "{message}"),
            Outcome::Stopped(report) => panic!("a panic reported as a stop: {report:?}"),
        }
        // It stopped what it could: the container is stopped, its generation unloaded.
        let snapshot = board.read().clone();
        assert_eq!(snapshot.containers[0].state, crate::model::State::Stopped);
        assert!(lock(&world).in_memory.is_empty(), "everything unloaded");
        // Requests are answered with the failure, not "shutting down".
        match handle.start("alpha").await {
            Err(super::ControlError::SupervisorFailed(why)) => {
                assert!(why.contains("simulated bug"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    });
}
