//! The figures a run measured: printed as they come, written to `summary.json` and shown
//! as a table at the end. A goal is only compared, never asserted.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::{Map, Value, json};

/// What a figure should be.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Self::AtMost(limit) => value <= limit,
            Self::AtLeast(limit) => value >= limit,
        }
    }

    fn text(self) -> String {
        match self {
            Self::AtMost(limit) => format!("<= {}", number(limit)),
            Self::AtLeast(limit) => format!(">= {}", number(limit)),
        }
    }
}

struct Figure {
    name: String,
    value: f64,
    goal: Option<Goal>,
}

/// Every figure of one run, in the order they were measured.
#[derive(Default)]
pub struct Figures {
    list: Vec<Figure>,
    failed: Vec<String>,
}

impl Figures {
    /// A figure with no goal of its own (context for another one).
    pub fn add(&mut self, name: &str, value: f64) {
        self.push(name, value, None);
    }

    /// A figure with its goal.
    pub fn add_goal(&mut self, name: &str, value: f64, goal: Goal) {
        self.push(name, value, Some(goal));
    }

    fn push(&mut self, name: &str, value: f64, goal: Option<Goal>) {
        println!("  {name} = {}", number(value));
        self.list.push(Figure {
            name: name.to_owned(),
            value,
            goal,
        });
    }

    /// A benchmark that could not run to its end.
    pub fn failed(&mut self, benchmark: &str, error: &anyhow::Error) {
        println!("{benchmark}: FAILED: {error:#}");
        self.failed.push(format!("{benchmark}: {error:#}"));
    }

    pub fn any_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// The flat JSON object of `summary.json`.
    pub fn summary(&self, quick: bool, benchmarks: &[&str]) -> Value {
        let mut object = Map::new();
        for figure in &self.list {
            // Three decimals are plenty, and keep the file readable.
            let rounded = (figure.value * 1000.0).round() / 1000.0;
            object.insert(figure.name.clone(), json!(rounded));
        }
        object.insert("machine".into(), machine());
        object.insert("quick".into(), json!(quick));
        object.insert("benchmarks".into(), json!(benchmarks));
        object.insert(
            "timestamp".into(),
            json!(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
        );
        if !self.failed.is_empty() {
            object.insert("failed".into(), json!(self.failed));
        }
        Value::Object(object)
    }

    pub fn write_summary(
        &self,
        path: &Path,
        quick: bool,
        benchmarks: &[&str],
    ) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.summary(quick, benchmarks))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The closing table: figure, value, goal, met?
    pub fn table(&self) -> String {
        let width = self
            .list
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>12}  {:<10}  met?",
            "figure", "value", "goal"
        );
        let _ = writeln!(out, "{}", "-".repeat(width + 34));
        for figure in &self.list {
            let (goal, met) = match figure.goal {
                Some(goal) => (
                    goal.text(),
                    if goal.met(figure.value) { "yes" } else { "NO" },
                ),
                None => (String::new(), ""),
            };
            let line = format!(
                "{:<width$}  {:>12}  {goal:<10}  {met}",
                figure.name,
                number(figure.value)
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for failed in &self.failed {
            let _ = writeln!(out, "FAILED: {failed}");
        }
        out
    }
}

/// A figure for humans: integers as such, small values with more decimals.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The value at fraction `p` (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of some values (for per-repetition figures).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Cores, memory, kernel, CPU and the compiler: what the figures were measured on.
fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let rustc =
        std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({
        "cores": cores(),
        "memory_gib": memory_gib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "rustc": rustc,
        "profile": "release",
    })
}
