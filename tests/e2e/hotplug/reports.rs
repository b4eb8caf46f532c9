//! What is not a change and what is reported when: `touch`, one report per broken
//! content, `settle_ms` for partial files, names that are not plugin files.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use balut_tests::{Host, Lib, PluginDir, Put, STATE_TIMEOUT, lib_bytes, sha12, versioned_bytes};

use super::{first_stop_of, generation, loaded_lines, not_elf, refused_lines, wait_running_on};
use crate::{barrier, terminate_cleanly};

#[test]
fn touch_is_not_a_change() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    // Frequent rescans must not mistake a new mtime for new content either.
    dir.write_config("[host]\nrescan_interval_ms = 200\n");
    let host = Host::start(&dir);
    let chaos = host.wait_state("chaos", "running", STATE_TIMEOUT);
    assert_eq!(generation(&chaos), 1, "{chaos}");
    let mark = host.mark();
    touch(&dir.plugins().join("libchaos.so"));
    barrier(&host, &dir);
    std::thread::sleep(Duration::from_millis(700));
    let lines = host.lines_since(mark);
    assert!(
        loaded_lines(&lines, "libchaos.so").is_empty()
            && !lines.iter().any(|l| l.contains("plugin reloaded")),
        "touch reloaded the plugin:\n{}",
        lines.join("\n")
    );
    assert_eq!(first_stop_of(&lines, "chaos"), None, "{}", lines.join("\n"));
    let chaos = host.container("chaos");
    assert_eq!(
        (chaos["state"].as_str(), generation(&chaos)),
        (Some("running"), 1),
        "{chaos}"
    );
    let entry = host.plugin("libchaos.so");
    assert_eq!(
        (entry["status"].as_str(), generation(&entry)),
        (Some("loaded"), 1),
        "{entry}"
    );

    // The same content again under a new inode (renamed in) is not a change either.
    dir.put("libchaos.so", &lib_bytes(Lib::Chaos), Put::Rename);
    barrier(&host, &dir);
    let lines = host.lines_since(mark);
    assert!(
        loaded_lines(&lines, "libchaos.so").is_empty(),
        "the same content was loaded again:\n{}",
        lines.join("\n")
    );
    let chaos = host.container("chaos");
    assert_eq!(
        (chaos["state"].as_str(), generation(&chaos)),
        (Some("running"), 1),
        "{chaos}"
    );
    terminate_cleanly(host);
}

#[test]
fn broken_file_is_reported_once_per_content() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config("[host]\nrescan_interval_ms = 200\nsettle_ms = 300\n");
    let host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    let refused = |h: &Host| refused_lines(&h.lines(), "junk.so").len();

    let junk = dir.put("junk.so", &not_elf(1), Put::Cp);
    let entry = host.wait_plugin_status("junk.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "not_elf", "{entry}");
    host.wait_for(
        "one `plugin file refused` line for junk.so",
        STATE_TIMEOUT,
        |h| refused(h) >= 1,
    );

    // Touching it, and rescans, do not report it again.
    touch(&junk);
    barrier(&host, &dir);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(refused(&host), 1, "{}", host.logs());

    // New broken content is reported again, once.
    dir.put("junk.so", &not_elf(2), Put::InPlace);
    host.wait_for("a second refusal of junk.so", STATE_TIMEOUT, |h| {
        refused(h) >= 2
    });
    let half = lib_bytes(Lib::Chaos);
    dir.put("junk.so", &half[..half.len() / 2], Put::Rename);
    let entry = host.wait_plugin("junk.so", "refused as truncated", STATE_TIMEOUT, |p| {
        p["error_kind"] == "truncated"
    });
    assert_eq!(entry["status"], "error", "{entry}");
    touch(&junk);
    barrier(&host, &dir);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        refused(&host),
        3,
        "one refusal per content\n{}",
        host.logs()
    );
    let chaos = host.container("chaos");
    assert_eq!(chaos["state"], "running", "{chaos}");
    terminate_cleanly(host);
}

#[test]
fn settle_ms_holds_back_partial_files_only() {
    // A file that is not yet a whole ELF may still be being written: it is reported only
    // once it stayed unchanged for settle_ms. A whole ELF that is no plugin is not waited for.
    let mut dir = PluginDir::new();
    dir.write_config("[host]\nsettle_ms = 2000\n");
    let host = Host::start(&dir);
    barrier(&host, &dir);
    let chaos = lib_bytes(Lib::Chaos);
    let written = Instant::now();
    dir.put("libcut.so", &chaos[..chaos.len() / 2], Put::Rename);
    dir.put("libnoexport.so", &lib_bytes(Lib::NoExport), Put::Rename);
    let entry = host.wait_plugin_status("libnoexport.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "missing_export", "{entry}");
    let early = written.elapsed();
    assert!(
        early < Duration::from_millis(1500),
        "a whole ELF was held back like a partial file: reported after {early:?}"
    );
    while written.elapsed() < Duration::from_millis(1500) {
        let refused = refused_lines(&host.lines(), "libcut.so");
        assert!(
            refused.is_empty(),
            "reported {:?} after it was written, before settle_ms: {refused:?}",
            written.elapsed()
        );
        assert!(
            host.find_plugin("libcut.so")
                .is_none_or(|p| p["status"] != "error"),
            "an error before settle_ms: {:?}",
            host.find_plugin("libcut.so")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let entry = host.wait_plugin_status("libcut.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "truncated", "{entry}");
    eprintln!(
        "[settle] truncated file reported after {:?}",
        written.elapsed()
    );
    // The log line is read from the host's stderr by another thread: wait for it.
    let lines = host.wait_until("the refusal's log line", STATE_TIMEOUT, |h| {
        let lines = refused_lines(&h.lines(), "libcut.so");
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(lines.len(), 1, "refused once: {lines:?}");
    terminate_cleanly(host);
}

#[test]
fn partial_file_with_a_future_mtime_is_still_reported() {
    // Copies that keep their source's timestamps (rsync -t, tar, cp -p) from a machine whose
    // clock runs ahead arrive "modified in the future". Unchanged for settle_ms, such a
    // partial file must be reported like any other, not waited for until that time comes.
    let mut dir = PluginDir::new();
    dir.write_config("[host]\nsettle_ms = 300\n");
    let host = Host::start(&dir);
    barrier(&host, &dir);
    let chaos = lib_bytes(Lib::Chaos);
    let staged = dir.staging().join("libcut.so");
    balut_tests::write_bytes(&staged, &chaos[..chaos.len() / 2]);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() + Duration::from_secs(3600)))
        .expect("set the mtime an hour ahead");
    std::fs::rename(&staged, dir.plugins().join("libcut.so")).expect("mv into the folder");
    let entry = host.wait_plugin(
        "libcut.so",
        "reported (settle_ms = 300)",
        Duration::from_secs(10),
        |p| p["status"] == "error",
    );
    assert_eq!(entry["error_kind"], "truncated", "{entry}");
    terminate_cleanly(host);
}

/// Names that are not plugin files, each holding a valid plugin that would clash with
/// `libchaos.so` (or start a container) if the host took it for one.
const NOT_PLUGINS: [&str; 5] = [
    "README.txt",
    ".hidden.so",
    "x.so.tmp",
    "x.so~",
    "libchaos.so.bak",
];

fn put_non_plugins(dir: &PluginDir) {
    let chaos = versioned_bytes(Lib::Chaos, 9);
    for name in NOT_PLUGINS {
        dir.put(name, &chaos, Put::Rename);
    }
    let sub = dir.plugins().join("sub");
    std::fs::create_dir(&sub).expect("create sub/");
    std::fs::write(sub.join("libticker.so"), &*lib_bytes(Lib::Ticker)).expect("write sub/");
    std::fs::create_dir(dir.plugins().join("x.so")).expect("create x.so/");
}

fn assert_only_chaos_and_the_folder(host: &Host) {
    let plugins = host.plugins();
    let files: Vec<&str> = plugins.iter().filter_map(|p| p["file"].as_str()).collect();
    assert_eq!(files, ["libchaos.so", "x.so"], "{plugins:?}");
    let folder = host.plugin("x.so");
    assert_eq!(folder["status"], "error", "{folder}");
    assert_eq!(folder["error_kind"], "not_a_file", "{folder}");
    let names: Vec<String> = host
        .containers()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["chaos"], "{:?}", host.containers());
    let noisy: Vec<String> = host
        .lines()
        .into_iter()
        .filter(|l| NOT_PLUGINS.iter().any(|n| l.contains(n)) || l.contains("sub/"))
        .collect();
    assert!(
        noisy.is_empty(),
        "ignored files made noise:\n{}",
        noisy.join("\n")
    );
}

#[test]
fn files_that_are_not_plugins_are_ignored() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    let host = Host::start(&dir);
    let sha = sha12(&lib_bytes(Lib::Chaos));
    wait_running_on(&host, "chaos", &sha);
    put_non_plugins(&dir);
    barrier(&host, &dir);
    host.wait_plugin_status("x.so", "error", STATE_TIMEOUT);
    assert_only_chaos_and_the_folder(&host);
    let chaos = host.container("chaos");
    assert_eq!(generation(&chaos), 1, "{chaos}");
    terminate_cleanly(host);

    // The start-up scan ignores them too.
    let host = Host::start(&dir);
    wait_running_on(&host, "chaos", &sha);
    host.wait_plugin_status("x.so", "error", STATE_TIMEOUT);
    barrier(&host, &dir);
    assert_only_chaos_and_the_folder(&host);
    // The folder named like a plugin goes away: so does its entry.
    std::fs::remove_dir(dir.plugins().join("x.so")).expect("rmdir x.so");
    host.wait_plugin_gone("x.so", STATE_TIMEOUT);
    terminate_cleanly(host);
}

fn touch(path: &Path) {
    let status = Command::new("touch").arg(path).status().expect("run touch");
    assert!(status.success(), "touch {}: {status}", path.display());
}
