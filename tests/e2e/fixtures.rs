//! Broken plugin files beside a good plugin: each is reported with its exact error kind and
//! the good plugin keeps running and serving.

use std::time::Duration;

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, build, http_get};
use serde_json::Value;

use crate::echo_entry;

/// Puts `files` (by `setup`) beside http-echo, checks each is an error of `kind`, checks
/// http-echo is running and answering, and hands back the folder (keep it alive while the
/// host runs), the host and the error entries.
fn beside_echo(
    setup: impl FnOnce(&PluginDir),
    files: &[&str],
    kind: &str,
) -> (PluginDir, Host, Vec<Value>) {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    setup(&dir);
    dir.write_config(&echo_entry("http-echo", "still serving"));
    let host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);

    let plugins = host.plugins();
    assert_eq!(
        plugins.len(),
        files.len() + 1,
        "one entry per file: {plugins:?}"
    );
    let mut entries = Vec::new();
    for file in files {
        // A broken file only just written may still be being written: the host reports
        // it once it has settled (`settle_ms`, 1 s by default).
        let p = host.wait_until(&format!("{file} to settle"), STATE_TIMEOUT, |h| {
            let p = h.plugin(file);
            (p["status"] != "loading").then_some(p)
        });
        assert_eq!(p["status"], "error", "{p}");
        assert_eq!(p["error_kind"], kind, "{file}: {p}");
        assert!(
            p["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{file}: no error text: {p}"
        );
        entries.push(p);
    }
    let good = host.plugin("libhttp_echo.so");
    assert_eq!(good["status"], "loaded", "{good}");
    assert!(good["error_kind"].is_null(), "{good}");
    assert_eq!(good["name"], "http-echo");

    let echo = host.echo_addr("http-echo");
    let (status, body) = http_get(echo, "/");
    assert_eq!(
        (status, body.contains("still serving")),
        (200, true),
        "http-echo answered {status} {body:?}"
    );
    // Still fine a little later (a crash in a background thread would show by now).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host.state("http-echo"), "running");
    assert_eq!(http_get(echo, "/").0, 200);
    (dir, host, entries)
}

/// SIGTERM and expect a clean exit: broken files have no containers to fail.
fn stop_cleanly(mut host: Host) {
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status: {status}\n{}",
        host.logs()
    );
}

#[test]
fn not_elf_file() {
    let (_dir, host, _) = beside_echo(
        |dir| {
            dir.copy_file(&build().fixture_file("not-elf.so"), "not-elf.so");
        },
        &["not-elf.so"],
        "not_elf",
    );
    stop_cleanly(host);
}

#[test]
fn truncated_copies_of_a_good_plugin() {
    let bytes = std::fs::read(build().lib(Lib::HttpEcho)).expect("read libhttp_echo.so");
    assert!(
        bytes.len() > 3 * 4096,
        "libhttp_echo.so is suspiciously small"
    );
    let (_dir, host, _) = beside_echo(
        |dir| {
            dir.write_file("libcut_half.so", &bytes[..bytes.len() / 2]);
            dir.write_file("libcut_4k.so", &bytes[..4096]);
            dir.write_file("libcut_tail.so", &bytes[..bytes.len() - 1024]);
        },
        &["libcut_half.so", "libcut_4k.so", "libcut_tail.so"],
        "truncated",
    );
    stop_cleanly(host);
}

#[test]
fn library_without_the_plugin_export() {
    let (_dir, host, _) = beside_echo(
        |dir| {
            dir.add(Lib::NoExport);
        },
        &[Lib::NoExport.file_name()],
        "missing_export",
    );
    stop_cleanly(host);
}

#[test]
fn plugin_for_another_interface_version() {
    let file = Lib::WrongInterface.file_name();
    let (_dir, host, entries) = beside_echo(
        |dir| {
            dir.add(Lib::WrongInterface);
        },
        &[file],
        "interface_mismatch",
    );
    let p = &entries[0];
    let error = p["error"].as_str().unwrap_or_default();
    for needle in [file, "wrong-interface", "2.0", "1.3"] {
        assert!(
            error.contains(needle),
            "interface error does not name {needle:?}: {error:?}"
        );
    }
    // The host must refuse it before running any of its code: nothing of it is mapped.
    assert!(
        !host.maps().contains("libfixture_wrong_interface"),
        "the wrong-interface library was mapped"
    );
    if let Some(c) = host
        .containers()
        .iter()
        .find(|c| c["plugin"] == "wrong-interface")
    {
        assert_eq!(c["state"], "failed", "{c}");
    }
    stop_cleanly(host);
}

#[test]
fn plugin_with_a_mismatched_layout() {
    let (_dir, host, _) = beside_echo(
        |dir| {
            dir.add(Lib::LayoutMismatch);
        },
        &[Lib::LayoutMismatch.file_name()],
        "layout_mismatch",
    );
    stop_cleanly(host);
}

#[test]
fn plugin_whose_constructor_panics() {
    let (_dir, mut host, entries) = beside_echo(
        |dir| {
            dir.add(Lib::PanicNew);
        },
        &[Lib::PanicNew.file_name()],
        "constructor_panicked",
    );
    let error = entries[0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("fixture: constructor panicked"), "{error:?}");
    let failed: Vec<Value> = host
        .containers()
        .into_iter()
        .filter(|c| c["file"] == Lib::PanicNew.file_name())
        .collect();
    for c in &failed {
        // Its restart policy (on-failure) retries it with a backoff; it stays down.
        let state = c["state"].as_str().unwrap_or_default();
        assert!(
            ["failed", "backoff", "quarantined", "starting"].contains(&state),
            "{c}"
        );
        let last = c["last_error"].as_str().unwrap_or_default();
        assert!(last.contains("fixture: constructor panicked"), "{c}");
    }
    host.signal(Signal::SIGTERM);
    host.wait_exit(EXIT_TIMEOUT);
}
