//! `call`: one health probe round trip host -> plugin -> host through `Worker::health`
//! (the probe tasks' path: a job to the container's worker thread, the call through the
//! plugin's FFI box, the answer back on a oneshot), from a task on the host's runtime
//! flavour; beside a direct in-process trait call of `Container::health`.
//!
//! A call through the plugin's FFI box on the calling thread is not measured: the box lives
//! on the worker thread and the loader does not hand it out (it would take `unsafe` outside
//! `host/src/loader`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use balut_plugin_api::{Container, Error};

use crate::Artifacts;
use crate::inproc::{self, Bench, PluginFile, TIMEOUT};
use crate::report::{Figures, Goal, percentile, us};

/// Direct calls are timed in batches: one is far below the clock's resolution.
const BATCH: u32 = 100;

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
        for _ in 0..1000 {
            container.worker.health(TIMEOUT).await?;
        }
        let mut latencies = Vec::with_capacity(calls);
        for _ in 0..calls {
            let began = Instant::now();
            let report = container.worker.health(TIMEOUT).await?;
            latencies.push(began.elapsed());
            anyhow::ensure!(
                report.healthy,
                "chaos reported unhealthy: {}",
                report.message
            );
        }
        inproc::unload(container.stop().await?)?;
        anyhow::Ok(latencies)
    });
    let mut latencies = runtime.block_on(task)??;
    latencies.sort();
    println!("call: {calls} health round trips through Worker::health (multi-threaded runtime)");
    figures.add_goal(
        "call_rt_p50_us",
        us(percentile(&latencies, 0.5)),
        Goal::AtMost(20.0),
    );
    figures.add("call_rt_p99_us", us(percentile(&latencies, 0.99)));

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
