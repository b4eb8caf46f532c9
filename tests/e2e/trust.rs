//! Strict modes (like sshd's StrictModes): anyone who can write the plugin folder or a plugin
//! file can run code as the host, so such folders and files are refused unless
//! `--no-strict-modes` (or `host.strict_modes = false`) says otherwise.

use std::ffi::OsString;
use std::time::Duration;

use balut_tests::{
    Host, Lib, PluginDir, STATE_TIMEOUT, http_get, lib_bytes, run_balut, set_mode, sha12,
};
use serde_json::Value;

use crate::{echo_entry, terminate_cleanly, ticker_entry};

/// A uid that is neither root nor (when the tests run as root) the host's user.
const OTHER_UID: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `balut run` on `dir` must refuse to start: exit code 2, a message naming the folder and
/// containing each of `needles`.
fn refused_to_start(dir: &PluginDir, needles: &[&str]) {
    let mut args = dir.run_args();
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let out = run_balut(args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        !out.stderr.contains("http api listening"),
        "the host started: {out:?}"
    );
    let folder = dir.plugins().display().to_string();
    assert!(
        out.stderr.contains(&folder),
        "the message should name {folder}: {}",
        out.stderr
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "the message should contain {needle:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn writable_plugin_folder_is_refused() {
    for mode in [0o775, 0o757, 0o777, 0o770] {
        let dir = PluginDir::with(&[Lib::Chaos]);
        set_mode(&dir.plugins(), mode);
        refused_to_start(&dir, &[&format!("{mode:o}")]);
    }
}

#[test]
fn plugin_folder_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: only root can give the folder to another user");
        return;
    }
    let dir = PluginDir::with(&[Lib::Chaos]);
    std::os::unix::fs::chown(dir.plugins(), Some(OTHER_UID), Some(OTHER_UID))
        .expect("chown the plugin folder");
    refused_to_start(&dir, &[]);
}

fn runs_anyway(dir: &PluginDir, extra: &[&str]) {
    let mut args = dir.run_args();
    args.extend(extra.iter().map(OsString::from));
    let host = Host::spawn(args, Some(dir.tmp()));
    let chaos = host.wait_state("chaos", "running", STATE_TIMEOUT);
    assert_eq!(
        chaos["sha256"],
        sha12(&lib_bytes(Lib::Chaos)).as_str(),
        "{chaos}"
    );
    let entry = host.plugin("libchaos.so");
    assert_eq!(entry["status"], "loaded", "{entry}");
    terminate_cleanly(host);
}

#[test]
fn no_strict_modes_allows_writable_folders_and_files() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    set_mode(&dir.plugins(), 0o777);
    set_mode(&dir.plugins().join("libchaos.so"), 0o666);
    runs_anyway(&dir, &["--no-strict-modes"]);
    dir.write_config("[host]\nstrict_modes = false\n");
    runs_anyway(&dir, &[]);
}

fn assert_untrusted_file(entry: &Value, file: &str, mode: &str) {
    assert_eq!(entry["status"], "error", "{entry}");
    assert_eq!(entry["error_kind"], "untrusted", "{entry}");
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(file) && error.contains(mode),
        "the error should name {file} and its mode {mode}: {entry}"
    );
}

#[test]
fn writable_plugin_file_is_untrusted_and_others_keep_running() {
    let mut dir = PluginDir::with(&[Lib::Chaos, Lib::HttpEcho]);
    dir.write_config(&echo_entry("web", "still here"));
    set_mode(&dir.plugins().join("libchaos.so"), 0o664);
    let host = Host::start(&dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    let entry = host.wait_plugin_status("libchaos.so", "error", STATE_TIMEOUT);
    assert_untrusted_file(&entry, "libchaos.so", "664");

    // Arriving while the host runs, already world-writable.
    let staged = dir.staging().join("libticker.so");
    balut_tests::write_bytes(&staged, &lib_bytes(Lib::Ticker));
    set_mode(&staged, 0o646);
    std::fs::rename(&staged, dir.plugins().join("libticker.so")).expect("mv into the folder");
    let entry = host.wait_plugin_status("libticker.so", "error", STATE_TIMEOUT);
    assert_untrusted_file(&entry, "libticker.so", "646");

    // Owned by another user (only root can arrange that).
    if is_root() {
        let staged = dir.staging().join("libpanic.so");
        balut_tests::write_bytes(&staged, &lib_bytes(Lib::PanicNew));
        std::os::unix::fs::chown(&staged, Some(OTHER_UID), Some(OTHER_UID)).expect("chown");
        std::fs::rename(&staged, dir.plugins().join("libpanic.so")).expect("mv into the folder");
        let entry = host.wait_plugin_status("libpanic.so", "error", STATE_TIMEOUT);
        assert_eq!(entry["error_kind"], "untrusted", "{entry}");
        assert!(
            entry["error"]
                .as_str()
                .is_some_and(|e| e.contains("libpanic.so")),
            "{entry}"
        );
    }

    // None of them ran any code: nothing copied, nothing mapped, no container of theirs.
    for stem in ["libchaos", "libticker", "libpanic"] {
        let prefix = format!("{stem}-");
        assert!(
            !host.private_copies().iter().any(|c| c.starts_with(&prefix))
                && !host.mapped_copies().iter().any(|c| c.starts_with(&prefix)),
            "{stem} was copied or mapped"
        );
    }
    assert!(
        host.containers()
            .iter()
            .all(|c| c["name"] == "web" || c["state"] != "running"),
        "{:?}",
        host.containers()
    );
    let web = host.container("web");
    assert_eq!(web["state"], "running", "{web}");
    let (status, body) = http_get(host.echo_addr("web"), "/");
    assert_eq!(status, 200);
    assert!(body.contains("still here"), "{body:?}");

    // Fixed with `chmod go-w`: now it is trusted, loads and runs.
    set_mode(&dir.plugins().join("libchaos.so"), 0o644);
    let chaos = host.wait_state("chaos", "running", STATE_TIMEOUT);
    assert_eq!(
        chaos["sha256"],
        sha12(&lib_bytes(Lib::Chaos)).as_str(),
        "{chaos}"
    );
    let entry = host.wait_plugin_status("libchaos.so", "loaded", STATE_TIMEOUT);
    assert!(entry["error_kind"].is_null(), "{entry}");
    terminate_cleanly(host);
}

#[test]
fn writable_folders_on_the_way_are_untrusted_even_after_start() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    let ticks = dir.path().join("ticks.log");
    dir.write_config(&format!(
        "{}{}",
        echo_entry("web", "still here"),
        ticker_entry("ticker", &ticks, 1000)
    ));
    // A symlink to a plugin in a sub-folder that its group can write.
    let versions = dir.plugins().join("versions");
    std::fs::create_dir(&versions).expect("mkdir versions");
    balut_tests::write_bytes(&versions.join("chaos-2.so"), &lib_bytes(Lib::Chaos));
    set_mode(&versions, 0o775);
    std::os::unix::fs::symlink("versions/chaos-2.so", dir.plugins().join("libchaos.so"))
        .expect("symlink");
    let host = Host::start(&dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    let entry = host.wait_plugin_status("libchaos.so", "error", STATE_TIMEOUT);
    assert_untrusted_file(&entry, "versions", "775");

    // The plugin folder made writable after start-up: a new file is refused.
    let plugins = dir.plugins();
    set_mode(&plugins, 0o775);
    let staged = dir.staging().join("libticker.so");
    balut_tests::write_bytes(&staged, &lib_bytes(Lib::Ticker));
    std::fs::rename(&staged, plugins.join("libticker.so")).expect("mv into the folder");
    let entry = host.wait_plugin_status("libticker.so", "error", STATE_TIMEOUT);
    assert_untrusted_file(&entry, &plugins.display().to_string(), "775");
    assert_ne!(host.state("ticker"), "running");

    // Both fixed: both load.
    set_mode(&plugins, 0o755);
    set_mode(&versions, 0o755);
    // A chmod of a folder is no event on the files: the periodic rescan finds them.
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    host.wait_state("ticker", "running", STATE_TIMEOUT);
    for file in ["libchaos.so", "libticker.so"] {
        let entry = host.wait_plugin_status(file, "loaded", STATE_TIMEOUT);
        assert!(entry["error_kind"].is_null(), "{entry}");
    }
    let web = host.container("web");
    assert_eq!(web["state"], "running", "{web}");
    terminate_cleanly(host);
}
