//! `load`: time from a plugin file to its container `running`, per plugin, through the
//! host and for the floor (the same necessary steps by hand in this process).
//!
//! Host: a host runs with one warm-up plugin; N distinct plugin files are renamed into its
//! folder from a staging folder on the same file system; the time runs from the first
//! `rename` until the event stream (`/v1/events`) has shown all N containers `running`.
//! That is the host's hot-add path, which takes one file at a time: read, check, load,
//! register, construct and start it (awaited), then the next file.
//!
//! Floor: the same N files, sequentially like the host, in a process that has also loaded a
//! warm-up plugin: read the file, `Loader::load_bytes` (checks, hash, private copy, open,
//! abi_stable's checks), `Worker::spawn`, construct, start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::Artifacts;
use crate::host::{Dirs, Host};
use crate::inproc::{self, Bench};
use crate::plugins::Template;
use crate::report::{Figures, Goal, median, ms};

/// Plugin counts, each with its repetitions (full, quick).
const SIZES: [(usize, usize, usize); 3] = [(1, 15, 5), (10, 5, 3), (50, 5, 2)];

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let template = Template::new(std::fs::read(&artifacts.chaos)?)?;
    let runtime = inproc::runtime()?;
    println!(
        "load: per plugin, file -> running; host = hot add of N files (sequential in the host), \
         floor = the same steps by hand, sequential, in one process"
    );
    let mut ratios = Vec::new();
    for (count, full_reps, quick_reps) in SIZES {
        let reps = if quick { quick_reps } else { full_reps };
        let names: Vec<String> = (0..count).map(|i| format!("chaos-b{i:03}")).collect();
        let files: Vec<Vec<u8>> = names
            .iter()
            .map(|name| template.renamed(name))
            .collect::<anyhow::Result<_>>()?;
        let (mut host, mut floor) = (Vec::new(), Vec::new());
        // Interleaved, so drifting background load hits both alike.
        for _ in 0..reps {
            host.push(through_host(artifacts, &template, &names, &files)?);
            floor.push(runtime.block_on(by_hand(&template, &names, &files))?);
        }
        let step = |runs: &[Steps], which: fn(&Steps) -> Duration| {
            median(runs.iter().map(|s| ms(which(s))).collect())
        };
        println!(
            "load: {count} plugins, medians of {reps} runs, ms per plugin: host {:.2} (of which \
             its load metric {:.2}); floor {:.2} (read {:.2}, load {:.2}, spawn+construct+start {:.2})",
            step(&host, |s| s.total),
            step(&host, |s| s.load),
            step(&floor, |s| s.total),
            step(&floor, |s| s.read),
            step(&floor, |s| s.load),
            step(&floor, |s| s.start),
        );
        // Each run's own ratio (its host run against the floor run beside it).
        let mut each: Vec<f64> = host
            .iter()
            .zip(&floor)
            .map(|(h, f)| ms(h.total) / ms(f.total))
            .collect();
        each.sort_by(f64::total_cmp);
        let (host, floor) = (step(&host, |s| s.total), step(&floor, |s| s.total));
        figures.add(&format!("load_ms_per_plugin_host_{count}"), host);
        figures.add(&format!("load_ms_per_plugin_floor_{count}"), floor);
        ratios.push((count, host / floor, each));
    }
    for (count, ratio, each) in ratios {
        let name = if count == 50 {
            "load_ratio".to_owned()
        } else {
            format!("load_ratio_{count}")
        };
        println!(
            "load: {name}: the {} runs' own ratios: {}",
            each.len(),
            each.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        figures.add_goal(&name, ratio, Goal::AtMost(1.2));
        figures.add(&format!("{name}_min"), each[0]);
        figures.add(&format!("{name}_median"), median(each.clone()));
        figures.add(&format!("{name}_max"), each[each.len() - 1]);
    }
    Ok(())
}

/// Where the time per plugin went (only what a run can tell).
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    total: Duration,
    /// Reading the file.
    read: Duration,
    /// Floor: `Loader::load_bytes` (hash, checks, private copy, open). Host: its
    /// `balut_library_load_duration_seconds` (the same without the hash, which the host
    /// computes when it looks at the file).
    load: Duration,
    /// Spawning the worker, construct and start.
    start: Duration,
}

impl std::ops::Div<u32> for Steps {
    type Output = Self;

    fn div(self, count: u32) -> Self {
        Self {
            total: self.total / count,
            read: self.read / count,
            load: self.load / count,
            start: self.start / count,
        }
    }
}

/// Staged plugin files `lib<name>.so` in `dir`.
fn stage(dir: &Path, names: &[String], files: &[Vec<u8>]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    names
        .iter()
        .zip(files)
        .map(|(name, bytes)| {
            let path = dir.join(format!("lib{name}.so"));
            std::fs::write(&path, bytes)?;
            Ok(path)
        })
        .collect()
}

/// One host run: time per plugin from the first rename to all N running.
fn through_host(
    artifacts: &Artifacts,
    template: &Template,
    names: &[String],
    files: &[Vec<u8>],
) -> anyhow::Result<Steps> {
    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    std::fs::write(dirs.plugins.join("libchaos.so"), template.bytes())?;
    let staged = stage(&work.path().join("staging"), names, files)?;
    let host = Host::start(&artifacts.balut, &dirs, None)?;
    host.wait_ready(Duration::from_secs(60))?;
    let watch = host.watch_running(names.iter().cloned().collect::<HashSet<_>>())?;
    let load_time = || host.metric("balut_library_load_duration_seconds_sum");
    let loaded_before = load_time()?;
    let began = Instant::now();
    for path in &staged {
        let name = path.file_name().context("staged file name")?;
        std::fs::rename(path, dirs.plugins.join(name))?;
    }
    let all_running = watch.wait(Duration::from_secs(120)).with_context(|| {
        let plugins = host.get("/v1/plugins").unwrap_or_default().to_string();
        format!("plugins: {plugins:.2000}")
    })?;
    let (running, listed) = host.running()?;
    ensure!(
        running == names.len() + 1 && listed == running,
        "{running} of {listed} containers running, expected {}",
        names.len() + 1
    );
    let count = names.len() as u32;
    Ok(Steps {
        total: (all_running - began) / count,
        load: Duration::from_secs_f64(load_time()? - loaded_before) / count,
        ..Steps::default()
    })
}

/// The floor: the same steps by hand, one plugin after the other.
async fn by_hand(
    template: &Template,
    names: &[String],
    files: &[Vec<u8>],
) -> anyhow::Result<Steps> {
    let work = tempfile::tempdir()?;
    let folder = work.path().join("plugins");
    let mut bench = Bench::new(Some(work.path()))?;
    let warm_up_file = folder.join("libchaos.so");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(&warm_up_file, template.bytes())?;
    let warm_up = bench.load(&warm_up_file, template.bytes()).await?;
    let mut running = vec![(bench.start(&template.name()?, &warm_up).await?, warm_up)];
    let paths = stage(&folder, names, files)?;

    let mut steps = Steps::default();
    let began = Instant::now();
    for (path, name) in paths.iter().zip(names) {
        let read = Instant::now();
        let bytes = std::fs::read(path)?;
        let load = Instant::now();
        let library = bench.load(path, &bytes).await?;
        let start = Instant::now();
        ensure!(
            library.facts.info.name == *name,
            "{} declares `{}`",
            path.display(),
            library.facts.info.name
        );
        let container = bench.start(name, &library).await?;
        steps.read += load - read;
        steps.load += start - load;
        steps.start += start.elapsed();
        running.push((container, library));
    }
    steps.total = began.elapsed();

    for (container, library) in running {
        drop(library);
        inproc::unload(container.stop().await?)?;
    }
    Ok(steps / names.len() as u32)
}
