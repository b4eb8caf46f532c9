//! `balut check PLUGIN.so [--config FILE] [--run] [--json]`: everything the host checks
//! before it loads a plugin file, in the host's order and with the host's code, each step
//! timed and judged, for plugin authors and for CI.
//!
//! 1. `file`: the name, the trust checks (strict modes), the size limit, one read.
//! 2. `elf`: the whole-file ELF checks and the plugin declaration (`loader/elf.rs`): no
//!    code of the library runs.
//! 3. `interface`: the interface gate (`InterfaceVersion::loadable_by_host`).
//! 4. `preflight`: a child process opens and closes the library, so its initializers and
//!    finalizers run there (`loader/preflight.rs`). Nothing of the library ran in this
//!    process before this passed.
//! 5. `layout`: the library is opened here, and abi_stable's layout check runs
//!    (`loader/layout.rs`).
//! 6. `config`: each instance of the plugin in `--config` (else its default instance, with
//!    an empty config) is checked by the plugin's own config type (interface 1.2,
//!    `loader/check.rs`); a refusal names the key path.
//! 7. With `--run`, a scratch life cycle in a child process (`run.rs`).
//!
//! Exit codes: 0 every check passed (warnings and skipped steps included), 1 a check failed,
//! 2 bad usage or an unreadable or invalid `--config`.

mod load;
mod report;
mod run;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::CheckArgs;
use crate::config::{Config, ContainerConfig};
use crate::crash;
use crate::loader::{self, ConfigCheck, InterfaceVersion, Library, LoadError, PluginInfo};
use report::{Declared, Report, Step, Verdict};

/// The exit code of bad usage or a bad `--config`.
const EXIT_USAGE: u8 = 2;
/// What a crash of plugin code in this process exits with (`crash/`).
const EXIT_SOFTWARE: u8 = 70;

/// What the command line and the config file resolve to.
struct Setup {
    /// The plugin file, as given.
    file: PathBuf,
    config: Config,
    /// Whether `--config` was given.
    configured: bool,
    strict_modes: bool,
    run: bool,
}

impl Setup {
    fn from(args: &CheckArgs) -> anyhow::Result<Self> {
        let config = match &args.config {
            Some(file) => Config::load(file)?,
            None => Config::default(),
        };
        match std::fs::symlink_metadata(&args.plugin) {
            Ok(meta) if meta.is_dir() => {
                anyhow::bail!(
                    "{} is a folder, not a plugin library",
                    args.plugin.display()
                )
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("{}: {e}", args.plugin.display()),
        }
        Ok(Self {
            file: args.plugin.clone(),
            strict_modes: config.host.strict_modes && !args.no_strict_modes,
            configured: args.config.is_some(),
            config,
            run: args.run,
        })
    }

    fn load_timeout(&self) -> Duration {
        self.config.host.load_timeout_ms.duration()
    }
}

/// One instance whose config is checked (and, the first, run).
struct Instance {
    name: String,
    config_json: String,
    /// Its entry in `--config`, or `None` for the plugin's default instance.
    entry: Option<ContainerConfig>,
}

/// Runs `balut check` and ends the process with its exit code. The process ends without
/// running the finalizers of the library opened here (they ran in the pre-flight), like
/// `balut run`.
pub fn main(args: &CheckArgs) -> ExitCode {
    let setup = match Setup::from(args) {
        Ok(setup) => setup,
        Err(e) => {
            // `{e}`: a config error already says its cause.
            eprintln!("balut check: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = crash::install(EXIT_SOFTWARE) {
        tracing::warn!(error = %e, "a crash in plugin code will not be named");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("balut check: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut report = Report::new(&setup.file);
    runtime.block_on(checks(&setup, &mut report));
    report.conclude();
    let printed = if args.json {
        serde_json::to_string(&report).map(|json| json + "\n")
    } else {
        Ok(report.text())
    };
    let mut stdout = std::io::stdout().lock();
    match printed {
        Ok(text) => {
            let _ = stdout.write_all(text.as_bytes());
        }
        Err(e) => eprintln!("balut check: cannot render the report: {e}"),
    }
    let _ = stdout.flush();
    drop(stdout);
    runtime.shutdown_timeout(Duration::from_millis(200));
    crate::crash::exiting_on_purpose();
    crate::exit::immediately(report.exit_code)
}

/// The steps after `from` that an early end leaves out, in order.
const LATER: &[&str] = &["file", "elf", "interface", "preflight", "layout", "config"];

fn skip_after(report: &mut Report, from: &'static str, run: bool) {
    let later = LATER.iter().skip_while(|s| **s != from).skip(1);
    for step in later {
        report.push(Step::skipped(step, "not run: an earlier check failed"));
    }
    if run {
        report.push(Step::skipped("run", "not run: an earlier check failed"));
    }
}

/// A failed step from a load error: its message and its kind.
fn load_failed(step: &'static str, since: Instant, error: &LoadError) -> Step {
    Step::new(step, Verdict::Fail, since, error.to_string()).kind(error.kind())
}

async fn checks(setup: &Setup, report: &mut Report) {
    let file = &setup.file;
    // 1. The file: trust, size, one read.
    let since = Instant::now();
    let bytes = match load::read(setup) {
        Ok((bytes, detail)) => {
            let verdict = if detail.contains("ignored") {
                Verdict::Warn
            } else {
                Verdict::Pass
            };
            report.push(Step::new("file", verdict, since, detail));
            bytes
        }
        Err((kind, detail)) => {
            report.push(Step::new("file", Verdict::Fail, since, detail).kind(kind));
            return skip_after(report, "file", setup.run);
        }
    };
    // 2. The ELF checks and the declaration: the bytes only.
    let since = Instant::now();
    let info = match loader::elf::inspect(&bytes) {
        Ok(decl) => PluginInfo::from(&decl),
        Err(problem) => {
            let error = LoadError::from_elf(file, &bytes, problem);
            report.push(load_failed("elf", since, &error));
            return skip_after(report, "elf", setup.run);
        }
    };
    report.plugin = Some(Declared {
        name: info.name.clone(),
        version: info.version.clone(),
        interface: info.interface.to_string(),
    });
    let detail = format!(
        "a whole ELF shared object for this machine declaring plugin `{}` {}",
        info.name, info.version
    );
    report.push(Step::new("elf", Verdict::Pass, since, detail));
    // 3. The interface gate.
    let since = Instant::now();
    if !info.interface.loadable_by_host() {
        let error = LoadError::InterfaceMismatch {
            file: file.clone(),
            plugin: info.name.clone(),
            plugin_interface: info.interface,
            host_interface: InterfaceVersion::HOST,
        };
        report.push(load_failed("interface", since, &error));
        return skip_after(report, "interface", setup.run);
    }
    let detail = format!(
        "built for {}: this host loads {}.0 to {}",
        info.interface,
        InterfaceVersion::HOST.major,
        InterfaceVersion::HOST
    );
    report.push(Step::new("interface", Verdict::Pass, since, detail));
    // 4 and 5. The pre-flight in a child, then the open and the layout check here.
    let Some((library, exe, _loader)) = load::open(setup, &bytes, &info, report).await else {
        let last = report.steps.last().map_or("layout", |s| s.step);
        return skip_after(report, last, setup.run);
    };
    // 6. Each instance's config.
    let instances = instances(setup, &info.name);
    let mut run_allowed = true;
    for instance in &instances {
        run_allowed &= check_config(setup, &library, instance, report).await;
    }
    // 7. The life cycle.
    if !setup.run {
        report.push(Step::skipped("run", "not asked for (--run)"));
    } else if let Some(instance) = instances.first().filter(|_| run_allowed) {
        run::life_cycle(&exe, library, instance, &setup.config, report).await;
    } else {
        report.push(Step::skipped("run", "not run: the config was refused"));
    }
}

/// The instances of `plugin` in the config, in file order; else its default instance, named
/// after it, with an empty config (what the host runs without an entry for it).
fn instances(setup: &Setup, plugin: &str) -> Vec<Instance> {
    let configured: Vec<Instance> = setup
        .config
        .containers
        .iter()
        .filter(|(_, entry)| entry.plugin == plugin)
        .map(|(name, entry)| Instance {
            name: name.to_string(),
            config_json: entry.config_json(),
            entry: Some(entry.clone()),
        })
        .collect();
    if !configured.is_empty() {
        return configured;
    }
    vec![Instance {
        name: plugin.to_owned(),
        config_json: "{}".to_owned(),
        entry: None,
    }]
}

/// Checks one instance's config with the plugin's own type; returns whether it may run.
async fn check_config(
    setup: &Setup,
    library: &Arc<Library>,
    instance: &Instance,
    report: &mut Report,
) -> bool {
    let since = Instant::now();
    let name = &instance.name;
    let timeout = instance
        .entry
        .as_ref()
        .and_then(|e| e.start_timeout_ms)
        .unwrap_or(setup.config.host.start_timeout_ms)
        .duration();
    let default = instance.entry.is_none();
    let about = if default && setup.configured {
        format!(
            "no entry for plugin `{name}` in the config: its default instance `{name}`, config {{}}"
        )
    } else if default {
        format!("no --config: its default instance `{name}`, config {{}}")
    } else {
        format!("containers.{name}.config")
    };
    let (step, may_run) = match loader::check_config(library, &instance.config_json, timeout).await
    {
        Ok(ConfigCheck::Accepted) => (
            Step::new(
                "config",
                Verdict::Pass,
                since,
                format!("{about}: accepted by the plugin's config type"),
            ),
            true,
        ),
        Ok(ConfigCheck::Refused { path, message }) => {
            let key = if path.is_empty() || path == "." {
                format!("containers.{name}.config")
            } else {
                format!("containers.{name}.config.{path}")
            };
            // The default instance is only what the host would run without an entry: a
            // plugin whose config has required keys is told so, not failed.
            let verdict = if default {
                Verdict::Warn
            } else {
                Verdict::Fail
            };
            let detail = if default {
                format!("{about}: refused: {key}: {message} (give an entry in --config)")
            } else {
                format!("{key}: {message}")
            };
            let mut step = Step::new("config", verdict, since, detail).kind("bad_config");
            step.key = Some(key);
            // The default instance is still run: its constructor then says what it lacks.
            (step, default)
        }
        Ok(ConfigCheck::Unsupported) => (
            Step::new(
                "config",
                Verdict::Skip,
                since,
                format!(
                    "built for interface {}: only plugins built for 1.2 or later can check a \
                     config without constructing (--run constructs it)",
                    library.facts.info.interface
                ),
            ),
            true,
        ),
        Err(e) => (
            Step::new("config", Verdict::Fail, since, format!("{about}: {e}")).kind("config_check"),
            false,
        ),
    };
    report.push(step.instance(name));
    may_run
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_version_names_the_interfaces_loaded() {
        let text = crate::loader::version_text();
        let host = InterfaceVersion::HOST;
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(
            text.ends_with(&format!(
                "(plugin interface {host}; loads plugins built for {}.0 to {host})",
                host.major
            )),
            "{text}"
        );
    }

    #[test]
    fn skipping_lists_the_later_steps() {
        let mut report = Report::new(Path::new("x.so"));
        skip_after(&mut report, "interface", true);
        let steps: Vec<&str> = report.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, ["preflight", "layout", "config", "run"]);
    }
}
