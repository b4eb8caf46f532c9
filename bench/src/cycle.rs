//! `cycle`: memory after many load -> construct -> start -> stop -> dispose -> finish ->
//! unload cycles of `chaos` in this process, each a new generation (a new private copy),
//! beside the same cycles by a loader that never unloads (as abi_stable's own does).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use balut::loader::Library;

use crate::Artifacts;
use crate::inproc::{self, Bench, PluginFile};
use crate::report::{Figures, Goal};

/// The process's mappings and resident memory.
#[derive(Debug, Clone)]
struct Memory {
    maps: usize,
    rss_kib: u64,
    /// The mappings, one a line.
    lines: Vec<String>,
}

impl Memory {
    fn now() -> anyhow::Result<Self> {
        let lines: Vec<String> = std::fs::read_to_string("/proc/self/maps")?
            .lines()
            .map(str::to_owned)
            .collect();
        let rss_kib = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/self/status")?;
        Ok(Self {
            maps: lines.len(),
            rss_kib,
            lines,
        })
    }
}

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let cycles = if quick { 200 } else { 1000 };
    let PluginFile { dir, file, bytes } = PluginFile::copy_of(&artifacts.chaos)?;
    inproc::runtime()?.block_on(async {
        let mut bench = Bench::new(Some(dir.path()))?;
        for unload in [true, false] {
            let mut kept = Vec::new();
            // One warm-up cycle: first-use allocations are not growth.
            kept.extend(cycle(&mut bench, &file, &bytes, unload).await?);
            let before = Memory::now()?;
            let began = Instant::now();
            let mut half = None;
            for i in 0..cycles {
                if i == cycles / 2 {
                    half = Some(Memory::now()?);
                }
                kept.extend(cycle(&mut bench, &file, &bytes, unload).await?);
            }
            let took = began.elapsed();
            let after = Memory::now()?;
            let suffix = if unload { "" } else { "_never_unload" };
            println!(
                "cycle{suffix}: {cycles} cycles in {:.1} s ({:.1} ms each); maps {} -> {}, \
                 VmRSS {} -> {} KiB",
                took.as_secs_f64(),
                took.as_secs_f64() * 1e3 / cycles as f64,
                before.maps,
                after.maps,
                before.rss_kib,
                after.rss_kib
            );
            let maps_growth = after.maps as f64 - before.maps as f64;
            let rss_growth =
                (after.rss_kib as f64 - before.rss_kib as f64) / before.rss_kib as f64 * 100.0;
            if unload {
                // Name what appeared: a growth should be explained, not just counted.
                for line in after.lines.iter().filter(|l| !before.lines.contains(l)) {
                    let what = if malloc_arena(line) {
                        " (a glibc malloc arena: anonymous, on a 64 MiB boundary)"
                    } else {
                        ""
                    };
                    println!("cycle: new mapping: {line}{what}");
                }
                figures.add_goal("cycle_maps_growth", maps_growth, Goal::AtMost(0.0));
                figures.add_goal("cycle_rss_growth_pct", rss_growth, Goal::AtMost(5.0));
                if let Some(half) = half {
                    // A one-off (such as a malloc arena for one more concurrent thread)
                    // shows in the first half only; a leak per cycle shows in both.
                    let second_half = after.maps as f64 - half.maps as f64;
                    figures.add("cycle_maps_growth_second_half", second_half);
                }
            } else {
                figures.add("cycle_maps_growth_never_unload", maps_growth);
                figures.add("cycle_rss_growth_pct_never_unload", rss_growth);
            }
            // Dropping a `Library` without `unload` never closes it: these stay mapped.
            drop(kept);
        }
        Ok(())
    })
}

/// Whether a `/proc/self/maps` line looks like part of a glibc malloc arena: anonymous,
/// starting or ending on a 64 MiB boundary (`HEAP_MAX_SIZE` on 64-bit).
fn malloc_arena(line: &str) -> bool {
    const ARENA: u64 = 64 << 20;
    let mut fields = line.split_whitespace();
    let range = fields.next().unwrap_or_default();
    let anonymous = fields.nth(3) == Some("0") && fields.next().is_none();
    let aligned = range
        .split('-')
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .any(|address| address % ARENA == 0);
    anonymous && aligned
}

/// One cycle; returns the library when it is not to be unloaded.
async fn cycle(
    bench: &mut Bench,
    file: &Path,
    bytes: &[u8],
    unload: bool,
) -> anyhow::Result<Option<Arc<Library>>> {
    let library = bench.load(file, bytes).await?;
    let container = bench.start("chaos", &library).await?;
    drop(library);
    let library = container.stop().await?;
    if unload {
        inproc::unload(library)?;
        Ok(None)
    } else {
        Ok(Some(library))
    }
}
