//! What `balut check` found: one [`Step`] per check with its verdict and timing, printed as
//! a table or as JSON (fields in this order, durations in milliseconds rounded to
//! microseconds).

use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The verdict of one step, and of the whole check (the worst of its steps').
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not run: not asked for, or an earlier step failed.
    Skip,
    Pass,
    /// Passed, but something deserves a look (it does not change the exit code).
    Warn,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `file`, `elf`, `interface`, `preflight`, `layout`, `config`, then with `--run`:
    /// `process`, `new`, `start`, `ready`, `health`, `stop`, `drop`, `exit`.
    pub step: &'static str,
    /// The container instance a `config` or run step is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub verdict: Verdict,
    pub duration_ms: f64,
    pub detail: String,
    /// A stable name for why it failed (the API's `error_kind` for load errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A refused config's key path, from the container's entry (`containers.web.config.port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Step {
    pub fn new(step: &'static str, verdict: Verdict, since: Instant, detail: String) -> Self {
        Self {
            step,
            instance: None,
            verdict,
            duration_ms: millis(since.elapsed()),
            detail,
            kind: None,
            key: None,
        }
    }

    pub fn skipped(step: &'static str, detail: &str) -> Self {
        Self {
            step,
            instance: None,
            verdict: Verdict::Skip,
            duration_ms: 0.0,
            detail: detail.to_owned(),
            kind: None,
            key: None,
        }
    }

    pub fn kind(mut self, kind: &str) -> Self {
        self.kind = Some(kind.to_owned());
        self
    }

    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.to_owned());
        self
    }
}

/// Milliseconds, rounded to the microsecond.
fn millis(duration: Duration) -> f64 {
    let micros = u32::try_from(duration.as_micros()).unwrap_or(u32::MAX);
    f64::from(micros) / 1000.0
}

/// What the plugin file declares.
#[derive(Debug, Clone, Serialize)]
pub struct Declared {
    pub name: String,
    pub version: String,
    pub interface: String,
}

/// The whole check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    /// This host's crate version.
    pub balut: &'static str,
    /// The plugin interface this host is built with.
    pub host_interface: String,
    pub plugin: Option<Declared>,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    pub exit_code: u8,
}

impl Report {
    pub fn new(file: &std::path::Path) -> Self {
        Self {
            file: file.display().to_string(),
            balut: env!("CARGO_PKG_VERSION"),
            host_interface: crate::loader::InterfaceVersion::HOST.to_string(),
            plugin: None,
            steps: Vec::new(),
            verdict: Verdict::Pass,
            exit_code: 0,
        }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Whether a step has failed so far.
    pub fn failed(&self) -> bool {
        self.steps.iter().any(|s| s.verdict == Verdict::Fail)
    }

    /// Sets the verdict and exit code from the steps: 1 when any failed.
    pub fn conclude(&mut self) {
        let failed = self.failed();
        self.verdict = if failed {
            Verdict::Fail
        } else if self.steps.iter().any(|s| s.verdict == Verdict::Warn) {
            Verdict::Warn
        } else {
            Verdict::Pass
        };
        self.exit_code = u8::from(failed);
    }

    /// The report as a table for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "balut check {} (balut {}, plugin interface {})",
            self.file, self.balut, self.host_interface
        );
        if let Some(plugin) = &self.plugin {
            let _ = writeln!(
                out,
                "plugin `{}` {}, built for interface {}",
                plugin.name, plugin.version, plugin.interface
            );
        }
        for step in &self.steps {
            let time = if step.verdict == Verdict::Skip {
                String::new()
            } else {
                format!("{:.1} ms", step.duration_ms)
            };
            let about = match &step.instance {
                Some(instance) => format!("[{instance}] "),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<4}  {:<9} {:>10}  {about}{}",
                step.verdict.as_str(),
                step.step,
                time,
                step.detail
            );
        }
        let _ = writeln!(
            out,
            "verdict: {} (exit {})",
            self.verdict.as_str(),
            self.exit_code
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_to_microseconds() {
        assert_eq!(millis(Duration::from_nanos(1_234_567)), 1.234);
        assert_eq!(millis(Duration::ZERO), 0.0);
    }

    #[test]
    fn a_failed_step_fails_the_check_and_a_warning_does_not() {
        let mut report = Report::new(std::path::Path::new("libx.so"));
        report.push(Step::skipped("run", "not asked for (--run)"));
        report.push(Step::new(
            "config",
            Verdict::Warn,
            Instant::now(),
            "x".into(),
        ));
        report.conclude();
        assert_eq!((report.verdict, report.exit_code), (Verdict::Warn, 0));
        report.push(Step::new("elf", Verdict::Fail, Instant::now(), "y".into()).kind("not_elf"));
        report.conclude();
        assert_eq!((report.verdict, report.exit_code), (Verdict::Fail, 1));
        let json = serde_json::to_string(&report).expect("serializes");
        assert!(json.starts_with(r#"{"file":"libx.so","balut":"#), "{json}");
        assert!(json.contains(r#""kind":"not_elf""#), "{json}");
        assert!(report.text().contains("verdict: fail (exit 1)"));
    }
}
