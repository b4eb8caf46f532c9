//! `reload`: time from the `rename` of a new version of a plugin into the watched folder to
//! the new generation's container being `running`, over many reloads.

use std::time::{Duration, Instant};

use crate::Artifacts;
use crate::host::{Dirs, Host};
use crate::report::{Figures, Goal, ms, percentile};

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let reloads = if quick { 50 } else { 200 };
    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging)?;
    let original = std::fs::read(&artifacts.chaos)?;
    let target = dirs.plugins.join("libchaos.so");
    std::fs::write(&target, &original)?;
    let host = Host::start(&artifacts.balut, &dirs, None)?;
    host.wait_generation("chaos", 1, Duration::from_secs(60))?;

    let mut latencies = Vec::with_capacity(reloads);
    for i in 0..reloads {
        // A new version: the same library with different trailing bytes (a new hash).
        let mut bytes = original.clone();
        bytes.extend_from_slice(format!("version {i}").as_bytes());
        let staged = staging.join("libchaos.so");
        std::fs::write(&staged, &bytes)?;
        let began = Instant::now();
        std::fs::rename(&staged, &target)?;
        let running = host.wait_generation("chaos", i as u64 + 2, Duration::from_secs(30))?;
        latencies.push(running - began);
    }
    latencies.sort();
    println!(
        "reload: {reloads} reloads of a {:.1} MB plugin (min {:.1} ms, max {:.1} ms)",
        original.len() as f64 / 1e6,
        ms(latencies[0]),
        ms(latencies[latencies.len() - 1]),
    );
    figures.add_goal(
        "reload_p50_ms",
        ms(percentile(&latencies, 0.5)),
        Goal::AtMost(12.0),
    );
    figures.add_goal(
        "reload_p99_ms",
        ms(percentile(&latencies, 0.99)),
        Goal::AtMost(25.0),
    );
    figures.add("reload_min_ms", ms(latencies[0]));
    figures.add("reload_max_ms", ms(latencies[latencies.len() - 1]));
    Ok(())
}
