//! `call`: one health probe round trip host -> plugin -> host through `Worker::health`
//! (the probe tasks' path: a job to the container's worker thread, the call through the
//! plugin's FFI box, the answer back), from a task on the host's runtime flavour; beside
//! the floor of that path (a bare round trip between a task and an OS thread, no plugin)
//! and a direct in-process trait call of `Container::health`.
//!
//! The floor is the cheapest of several hand-offs written for it (a std channel, a slot with
//! `park`/`unpark` and an `AtomicWaker`, a locked queue with `unpark` and a oneshot back,
//! and that under `tokio::time::timeout` as the worker waits), measured in the same run.
//! The round trips are measured in rounds: in each round every path makes the same number
//! of calls, one path after the other (each round starting with another), so drifting
//! background load hits them alike.
//!
//! A call through the plugin's FFI box on the calling thread is not measured: the box lives
//! on the worker thread and the loader does not hand it out (it would take `unsafe` outside
//! `host/src/loader`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use balut_plugin_api::{Container, Error};
use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;

use crate::Artifacts;
use crate::inproc::{self, Bench, PluginFile, TIMEOUT};
use crate::report::{Figures, Goal, percentile, us};

/// Direct calls are timed in batches: one is far below the clock's resolution.
const BATCH: u32 = 100;

/// Calls per path in one round.
const ROUND: usize = 1000;

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let calls = if quick { 20_000 } else { 100_000 };
    let plugin = PluginFile::copy_of(&artifacts.chaos)?;
    let runtime = inproc::runtime()?;
    // On a runtime worker thread, as the host's probe tasks run.
    let task = runtime.spawn(async move {
        let mut bench = Bench::new(Some(plugin.dir.path()))?;
        let library = bench.load(&plugin.file, &plugin.bytes).await?;
        let container = bench.start("chaos", &library).await?;
        drop(library);
        let channel = ChannelFloor::spawn()?;
        let parked = ParkFloor::spawn()?;
        let queued = QueueFloor::spawn()?;
        // The worker's latencies, then each floor candidate's.
        let mut latencies: [Vec<Duration>; 5] = Default::default();
        // The first round warms up every path and is not kept; each round starts with
        // another path, so none always follows the same one.
        for round in 0..=calls / ROUND {
            for turn in 0..latencies.len() {
                let path = (round + turn) % latencies.len();
                let mut taken = Vec::with_capacity(ROUND);
                for _ in 0..ROUND {
                    let began = Instant::now();
                    match path {
                        0 => {
                            let report = container.worker.health(TIMEOUT).await?;
                            anyhow::ensure!(
                                report.healthy,
                                "chaos reported unhealthy: {}",
                                report.message
                            );
                        }
                        1 => {
                            channel.round_trip().await?;
                        }
                        2 => parked.round_trip().await,
                        3 => {
                            queued.round_trip().await?;
                        }
                        _ => {
                            tokio::time::timeout(TIMEOUT, queued.round_trip()).await??;
                        }
                    }
                    taken.push(began.elapsed());
                }
                if round > 0 {
                    latencies[path].append(&mut taken);
                }
            }
        }
        channel.finish()?;
        parked.finish()?;
        queued.finish()?;
        inproc::unload(container.stop().await?)?;
        anyhow::Ok(latencies)
    });
    let [
        mut worker,
        mut by_channel,
        mut by_park,
        mut by_queue,
        mut by_queue_timed,
    ] = runtime.block_on(task)??;
    for latencies in [
        &mut worker,
        &mut by_channel,
        &mut by_park,
        &mut by_queue,
        &mut by_queue_timed,
    ] {
        latencies.sort();
    }
    println!(
        "call: {} health round trips through Worker::health (multi-threaded runtime), in rounds \
         of {ROUND} beside the floor's",
        worker.len()
    );
    let p50 = |l: &[Duration]| us(percentile(l, 0.5));
    println!(
        "call: floor candidates, p50: std mpsc + tokio oneshot {:.2} us, park/unpark + \
         AtomicWaker {:.2} us, locked queue + unpark + tokio oneshot {:.2} us, the same under \
         tokio::time::timeout {:.2} us",
        p50(&by_channel),
        p50(&by_park),
        p50(&by_queue),
        p50(&by_queue_timed)
    );
    // The floor is the cheapest of them in this run.
    let floor = [&by_channel, &by_park, &by_queue, &by_queue_timed]
        .into_iter()
        .min_by(|a, b| p50(a).total_cmp(&p50(b)))
        .unwrap_or(&by_park);
    figures.add_goal("call_rt_p50_us", p50(&worker), Goal::AtMost(20.0));
    figures.add("call_rt_p99_us", us(percentile(&worker, 0.99)));
    figures.add("call_floor_rt_p50_us", p50(floor));
    figures.add("call_floor_rt_p99_us", us(percentile(floor, 0.99)));
    figures.add_goal(
        "call_rt_ratio",
        p50(&worker) / p50(floor),
        Goal::AtMost(1.2),
    );

    let mut direct = direct_calls(calls);
    direct.sort();
    println!(
        "call: {} direct calls of Container::health through &dyn Container, timed in batches \
         of {BATCH}",
        calls as u64 * u64::from(BATCH)
    );
    figures.add("direct_call_p50_us", us(percentile(&direct, 0.5)));
    figures.add("direct_call_p99_us", us(percentile(&direct, 0.99)));
    Ok(())
}

/// A floor candidate: the worker's hand-off before it was cut down, with nothing else: a
/// oneshot's sender over a std channel to a dedicated thread, which answers on it.
struct ChannelFloor {
    jobs: mpsc::Sender<oneshot::Sender<u64>>,
    thread: JoinHandle<()>,
}

impl ChannelFloor {
    fn spawn() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<oneshot::Sender<u64>>();
        let thread = std::thread::Builder::new()
            .name("floor-channel".into())
            .spawn(move || {
                let mut count = 0u64;
                while let Ok(answer) = queue.recv() {
                    count += 1;
                    let _ = answer.send(black_box(count));
                }
            })?;
        Ok(Self { jobs, thread })
    }

    async fn round_trip(&self) -> anyhow::Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(tx)
            .map_err(|_| anyhow::anyhow!("the floor's thread is gone"))?;
        Ok(rx.await?)
    }

    fn finish(self) -> anyhow::Result<()> {
        drop(self.jobs);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))
    }
}

/// A floor candidate with no allocation and no lock: one slot, the thread parked until the
/// task posts a request (`unpark`), the task woken through an `AtomicWaker` when the
/// answer is there.
struct ParkFloor {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

const IDLE: u8 = 0;
const ASKED: u8 = 1;
const ANSWERED: u8 = 2;

struct Shared {
    state: AtomicU8,
    waker: AtomicWaker,
    done: AtomicBool,
}

impl ParkFloor {
    fn spawn() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            waker: AtomicWaker::new(),
            done: AtomicBool::new(false),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("floor-park".into())
            .spawn(move || {
                loop {
                    while theirs.state.load(Ordering::Acquire) != ASKED {
                        if theirs.done.load(Ordering::Acquire) {
                            return;
                        }
                        std::thread::park();
                    }
                    black_box(());
                    theirs.state.store(ANSWERED, Ordering::Release);
                    theirs.waker.wake();
                }
            })?;
        Ok(Self { shared, thread })
    }

    fn thread(&self) -> &Thread {
        self.thread.thread()
    }

    async fn round_trip(&self) {
        self.shared.state.store(ASKED, Ordering::Release);
        self.thread().unpark();
        poll_fn(|cx| {
            self.shared.waker.register(cx.waker());
            match self.shared.state.compare_exchange(
                ANSWERED,
                IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Poll::Ready(()),
                Err(_) => Poll::Pending,
            }
        })
        .await;
    }

    fn finish(self) -> anyhow::Result<()> {
        self.shared.done.store(true, Ordering::Release);
        self.thread().unpark();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))
    }
}

/// A floor candidate: the worker's own hand-off with no plugin behind it: a oneshot's
/// sender into a locked queue, `unpark`; the thread takes it, parks when there is none, and
/// answers on it.
struct QueueFloor {
    queue: Arc<Mutex<(VecDeque<oneshot::Sender<u64>>, bool)>>,
    thread: JoinHandle<()>,
}

impl QueueFloor {
    fn spawn() -> std::io::Result<Self> {
        let queue = Arc::new(Mutex::new((VecDeque::<oneshot::Sender<u64>>::new(), false)));
        let theirs = queue.clone();
        let thread = std::thread::Builder::new()
            .name("floor-queue".into())
            .spawn(move || {
                let mut count = 0u64;
                loop {
                    let next = {
                        let mut queue = theirs.lock().unwrap_or_else(PoisonError::into_inner);
                        match queue.0.pop_front() {
                            Some(answer) => Some(answer),
                            None if queue.1 => return,
                            None => None,
                        }
                    };
                    match next {
                        Some(answer) => {
                            count += 1;
                            let _ = answer.send(black_box(count));
                        }
                        None => std::thread::park(),
                    }
                }
            })?;
        Ok(Self { queue, thread })
    }

    async fn round_trip(&self) -> anyhow::Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push_back(tx);
        self.thread.thread().unpark();
        Ok(rx.await?)
    }

    fn finish(self) -> anyhow::Result<()> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.thread.thread().unpark();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))
    }
}

/// A container that does nothing, for the direct call.
struct Trivial;

impl Container for Trivial {
    fn start(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// `samples` batches of direct calls; the time per call of each batch.
fn direct_calls(samples: usize) -> Vec<Duration> {
    let container: &dyn Container = &Trivial;
    (0..samples)
        .map(|_| {
            let began = Instant::now();
            for _ in 0..BATCH {
                black_box(black_box(container).health());
            }
            began.elapsed() / BATCH
        })
        .collect()
}
