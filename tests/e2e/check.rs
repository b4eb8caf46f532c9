//! `balut check PLUGIN.so`: a good plugin passes (exit 0) with and without `--run`; each
//! broken fixture gets its verdict at the right step and exit 1; a config the plugin's type
//! refuses names the key; a segfault in `--run` is a verdict, not a crash of `balut check`;
//! usage errors exit 2; `balut --version` names the interfaces it loads.

use std::ffi::OsString;
use std::time::Duration;

use balut_tests::{Finished, Lib, PluginDir, run_balut, run_balut_with};
use serde_json::Value;

/// Generous: a `--run` of a debug plugin takes well under a second.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `balut check` on `lib` (copied into a fresh plugin folder) with `extra` arguments
/// and `env`, `--json`; returns the exit code, the report and the whole output.
fn check(
    lib: Lib,
    config: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, Value, Finished) {
    let mut dir = PluginDir::new();
    let file = dir.add(lib);
    let mut args: Vec<OsString> = vec!["check".into(), file.into(), "--json".into()];
    if let Some(toml) = config {
        args.push("--config".into());
        args.push(dir.write_config(toml).into());
    }
    args.extend(extra.iter().map(OsString::from));
    let tmp = dir.tmp();
    let tmp = tmp.to_str().expect("temp paths are UTF-8");
    let mut env = env.to_vec();
    env.push(("TMPDIR", tmp));
    let done = run_balut_with(args, &env, CHECK_TIMEOUT);
    let code = done
        .status
        .code()
        .unwrap_or_else(|| panic!("balut check died of a signal: {done:?}"));
    let report: Value = serde_json::from_str(done.stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON report ({e}): {done:?}"));
    assert_eq!(report["exit_code"], code, "{done:?}");
    (code, report, done)
}

/// The verdict of the first step named `step` (and, when given, about `instance`).
fn verdict<'a>(report: &'a Value, step: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no step {step}: {report:#}"))
}

/// Every step's name and verdict, in order.
fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let name = s["step"].as_str().expect("step").to_owned();
            (name, s["verdict"].as_str().expect("verdict").to_owned())
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_good_plugin_passes_with_and_without_run() {
    let (code, report, done) = check(Lib::HttpEcho, None, &[], &[]);
    assert_eq!(code, 0, "{done:?}");
    assert_eq!(report["verdict"], "pass");
    assert_eq!(report["plugin"]["name"], "http-echo");
    assert_eq!(
        verdicts(&report),
        pairs(&[
            ("file", "pass"),
            ("elf", "pass"),
            ("interface", "pass"),
            ("preflight", "pass"),
            ("layout", "pass"),
            ("config", "pass"),
            ("run", "skip"),
        ])
    );
    let config =
        "[containers.web]\nplugin = \"http-echo\"\nconfig = { bind = \"127.0.0.1\", port = 0 }\n";
    let (code, report, done) = check(Lib::HttpEcho, Some(config), &["--run"], &[]);
    assert_eq!(code, 0, "{done:?}");
    let run: Vec<_> = verdicts(&report).into_iter().skip(5).collect();
    assert_eq!(
        run,
        pairs(&[
            ("config", "pass"),
            ("process", "pass"),
            ("new", "pass"),
            ("start", "pass"),
            ("ready", "pass"),
            ("health", "pass"),
            ("stop", "pass"),
            ("drop", "pass"),
            ("exit", "pass"),
        ])
    );
    assert_eq!(verdict(&report, "start")["instance"], "web");
    assert!(verdict(&report, "new")["duration_ms"].is_number());
}

#[test]
fn the_table_for_people_ends_with_the_verdict() {
    let dir = PluginDir::new();
    let file = dir.add(Lib::Ticker);
    let tmp = dir.tmp();
    let done = run_balut_with(
        [OsString::from("check"), file.into()],
        &[("TMPDIR", tmp.to_str().expect("UTF-8"))],
        CHECK_TIMEOUT,
    );
    // The ticker's config needs a path: its default instance is refused, a warning only.
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(done.stdout.contains("plugin `ticker`"), "{done:?}");
    assert!(done.stdout.contains("  warn  config"), "{done:?}");
    assert!(
        done.stdout.trim_end().ends_with("verdict: warn (exit 0)"),
        "{done:?}"
    );
}

#[test]
fn each_broken_fixture_fails_at_its_step() {
    let cases: [(Lib, &str, &str, &str); 3] = [
        (
            Lib::WrongInterface,
            "interface",
            "interface_mismatch",
            "built for plugin interface 2.0",
        ),
        (Lib::NoExport, "elf", "missing_export", "not a Balut plugin"),
        (
            Lib::LayoutMismatch,
            "layout",
            "layout_mismatch",
            "layout check",
        ),
    ];
    for (lib, step, kind, text) in cases {
        let (code, report, done) = check(lib, None, &["--run"], &[]);
        assert_eq!(code, 1, "{lib:?}: {done:?}");
        assert_eq!(report["verdict"], "fail", "{lib:?}");
        let failed = verdict(&report, step);
        assert_eq!(failed["verdict"], "fail", "{lib:?}: {report:#}");
        assert_eq!(failed["kind"], kind, "{lib:?}: {report:#}");
        assert!(
            failed["detail"].as_str().expect("detail").contains(text),
            "{lib:?}: {report:#}"
        );
        // Nothing after the failed step ran.
        let after: Vec<_> = verdicts(&report)
            .into_iter()
            .skip_while(|(s, _)| s != step)
            .skip(1)
            .collect();
        assert!(
            !after.is_empty() && after.iter().all(|(_, v)| v == "skip"),
            "{lib:?}: {report:#}"
        );
    }
}

#[test]
fn an_interface_mismatch_says_what_to_do() {
    let (_, report, _) = check(Lib::WrongInterface, None, &[], &[]);
    let detail = verdict(&report, "interface")["detail"]
        .as_str()
        .expect("detail")
        .to_owned();
    assert!(
        detail.contains(
            "plugin `wrong-interface` is built for plugin interface 2.0, this host loads 1.0 to 1."
        ),
        "{detail}"
    );
    assert!(
        detail.contains("the plugin is newer than this host: upgrade balut to a version that loads 2.0, or rebuild the plugin against balut-plugin-api "),
        "{detail}"
    );
    assert_eq!(report["plugin"]["interface"], "2.0");
}

#[test]
fn traps_in_initializers_are_refused_by_the_preflight() {
    let config = "[host]\nload_timeout_ms = 1500\n";
    for (trap, text) in [
        ("init-crash", "crash"),
        ("init-exit", "exit"),
        ("init-hang", "hang"),
        ("fini-hang", "hang"),
    ] {
        let (code, report, done) = check(Lib::Traps, Some(config), &[], &[("BALUT_TRAP", trap)]);
        assert_eq!(code, 1, "{trap}: {done:?}");
        let preflight = verdict(&report, "preflight");
        assert_eq!(preflight["verdict"], "fail", "{trap}: {report:#}");
        assert_eq!(
            preflight["kind"], "initializer_failed",
            "{trap}: {report:#}"
        );
        assert!(
            preflight["detail"]
                .as_str()
                .expect("detail")
                .contains(&format!("initializers or finalizers {text}")),
            "{trap}: {report:#}"
        );
        assert_eq!(verdict(&report, "layout")["verdict"], "skip", "{trap}");
    }
    // Without a trap it is a plain plugin.
    let (code, _, done) = check(Lib::Traps, None, &["--run"], &[]);
    assert_eq!(code, 0, "{done:?}");
}

#[test]
fn constructor_and_start_failures_are_verdicts_of_the_run() {
    // The panicking constructor only runs with --run.
    let (code, _, done) = check(Lib::PanicNew, None, &[], &[]);
    assert_eq!(code, 0, "{done:?}");
    let (code, report, done) = check(Lib::PanicNew, None, &["--run"], &[]);
    assert_eq!(code, 1, "{done:?}");
    let new = verdict(&report, "new");
    assert_eq!(new["kind"], "panicked", "{report:#}");
    assert!(
        new["detail"]
            .as_str()
            .expect("detail")
            .contains("fixture: constructor panicked")
    );
    assert_eq!(verdict(&report, "stop")["verdict"], "skip");

    // A failed start is followed by stop and drop, as in the host.
    let (code, report, done) = check(Lib::BrokenStart, None, &["--run"], &[]);
    assert_eq!(code, 1, "{done:?}");
    let start = verdict(&report, "start");
    assert_eq!(start["verdict"], "fail");
    assert!(
        start["detail"]
            .as_str()
            .expect("detail")
            .contains("fixture: this version cannot start")
    );
    for (step, expected) in [
        ("ready", "skip"),
        ("health", "skip"),
        ("stop", "pass"),
        ("drop", "pass"),
        ("exit", "pass"),
    ] {
        assert_eq!(
            verdict(&report, step)["verdict"],
            expected,
            "{step}: {report:#}"
        );
    }
}

#[test]
fn a_config_the_plugin_refuses_names_the_key() {
    let config = "[containers.good]\nplugin = \"chaos\"\nconfig = { hang_ms = 5 }\n\n\
                  [containers.bad]\nplugin = \"chaos\"\nconfig = { hang_ms = \"soon\" }\n\n\
                  [containers.other]\nplugin = \"ticker\"\nconfig = { nonsense = 1 }\n";
    let (code, report, done) = check(Lib::Chaos, Some(config), &["--run"], &[]);
    assert_eq!(code, 1, "{done:?}");
    let configs: Vec<&Value> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["step"] == "config")
        .collect();
    // Only this plugin's instances, in file order.
    assert_eq!(configs.len(), 2, "{report:#}");
    assert_eq!(configs[0]["instance"], "good");
    assert_eq!(configs[0]["verdict"], "pass");
    assert_eq!(configs[1]["instance"], "bad");
    assert_eq!(configs[1]["verdict"], "fail");
    assert_eq!(configs[1]["key"], "containers.bad.config.hang_ms");
    assert!(
        configs[1]["detail"]
            .as_str()
            .expect("detail")
            .starts_with("containers.bad.config.hang_ms: invalid type: string \"soon\""),
        "{report:#}"
    );
    // A refused config is not run.
    assert_eq!(verdict(&report, "run")["verdict"], "skip");
}

#[test]
fn a_segfault_in_run_is_a_verdict_not_a_crash_of_check() {
    let config = "[containers.boom]\nplugin = \"chaos\"\nconfig = { segfault_in = \"start\" }\n";
    let (code, report, done) = check(Lib::Chaos, Some(config), &["--run"], &[]);
    assert_eq!(code, 1, "{done:?}");
    let start = verdict(&report, "start");
    assert_eq!(start["verdict"], "fail", "{report:#}");
    assert_eq!(start["kind"], "crashed", "{report:#}");
    assert_eq!(
        start["detail"],
        "its process ended: killed by signal SIGSEGV"
    );
    assert_eq!(verdict(&report, "new")["verdict"], "pass");
    assert_eq!(verdict(&report, "stop")["verdict"], "skip");
    assert_eq!(verdict(&report, "exit")["verdict"], "pass");
}

#[test]
fn usage_and_config_errors_exit_2() {
    let dir = PluginDir::new();
    let missing = dir.plugins().join("libnothing.so");
    let done = run_balut([OsString::from("check"), missing.into()], CHECK_TIMEOUT);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("balut check: "), "{done:?}");
    let file = dir.add(Lib::Chaos);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[containers.x]\nplugin = 3\n").expect("write");
    let done = run_balut(
        [
            OsString::from("check"),
            file.into(),
            "--config".into(),
            bad.into(),
        ],
        CHECK_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("bad.toml"), "{done:?}");
}

#[test]
fn a_file_others_can_write_fails_the_file_step() {
    let dir = PluginDir::new();
    let file = dir.add(Lib::Chaos);
    balut_tests::set_mode(&file, 0o666);
    let done = run_balut(
        [
            OsString::from("check"),
            file.clone().into(),
            "--json".into(),
        ],
        CHECK_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    let report: Value = serde_json::from_str(done.stdout.trim()).expect("JSON");
    assert_eq!(verdict(&report, "file")["kind"], "untrusted", "{report:#}");
    let done = run_balut(
        [
            OsString::from("check"),
            file.into(),
            "--no-strict-modes".into(),
        ],
        CHECK_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(0), "{done:?}");
}

#[test]
fn version_names_the_interfaces_it_loads() {
    let done = run_balut(["--version"], CHECK_TIMEOUT);
    assert!(done.status.success(), "{done:?}");
    let line = done.stdout.trim();
    assert!(line.starts_with("balut 0."), "{line}");
    let (minor_text, rest) = line
        .split_once("(plugin interface 1.")
        .and_then(|(_, rest)| rest.split_once(';'))
        .unwrap_or_else(|| panic!("{line}"));
    let minor: u32 = minor_text.parse().unwrap_or_else(|_| panic!("{line}"));
    assert_eq!(
        rest,
        format!(" loads plugins built for 1.0 to 1.{minor})"),
        "{line}"
    );
}
