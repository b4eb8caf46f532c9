//! Hot plug: `balut run` watches its plugin folder. Files added are loaded and their
//! containers started; files changed are reloaded (the old generation keeps running if the
//! new content does not load, and comes back if the new containers do not start); files
//! removed are stopped, unloaded and forgotten. Every way of putting a file there works,
//! and a burst of changes converges to what the folder holds.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use balut_tests::{
    Host, Lib, PluginDir, Put, STATE_TIMEOUT, field_values, has_field, http_get, lib_bytes, sha12,
    versioned_bytes,
};
use serde_json::Value;

use crate::{barrier, chaos_entry, echo_entry, terminate_cleanly, ticker_entry};

/// Bytes of a file that is not an ELF at all; `n` makes each content different.
fn not_elf(n: u64) -> Vec<u8> {
    format!("this is not a plugin, take {n}\n")
        .repeat(64)
        .into_bytes()
}

/// The `generation` of a container or plugin entry.
fn generation(v: &Value) -> u64 {
    v["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no generation: {v}"))
}

/// Whether a log line is about plugin file `file` (`file=NAME`, or a path ending in it).
fn names_file(line: &str, file: &str) -> bool {
    let suffix = format!("/{file}");
    field_values(line, "file")
        .iter()
        .any(|v| v == file || v.ends_with(&suffix))
}

/// `library loaded` lines of `file` among `lines`.
fn loaded_lines(lines: &[String], file: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("library loaded") && names_file(l, file))
        .cloned()
        .collect()
}

/// `plugin file refused` lines of `file` among `lines`.
fn refused_lines(lines: &[String], file: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("plugin file refused") && names_file(l, file))
        .cloned()
        .collect()
}

/// The names in `copies` that are private copies of the plugin file with stem `stem`
/// (`libchaos` for `libchaos.so`).
fn copies_of(copies: &BTreeSet<String>, stem: &str) -> Vec<String> {
    let prefix = format!("{stem}-");
    copies
        .iter()
        .filter(|c| c.starts_with(&prefix))
        .cloned()
        .collect()
}

/// Waits until container `name` runs on content `sha` and returns it.
fn wait_running_on(host: &Host, name: &str, sha: &str) -> Value {
    host.wait_until(
        &format!("container {name:?} to run on content {sha}"),
        STATE_TIMEOUT,
        |h| {
            h.find_container(name)
                .filter(|c| c["state"] == "running" && c["sha256"] == sha)
        },
    )
}

/// Waits until plugin file `file` is loaded with content `sha` and returns its entry.
fn wait_loaded(host: &Host, file: &str, sha: &str) -> Value {
    host.wait_plugin(
        file,
        &format!("loaded with content {sha}"),
        STATE_TIMEOUT,
        |p| p["status"] == "loaded" && p["sha256"] == sha,
    )
}

/// Waits until exactly one private copy of `stem` exists and is mapped, and it is of
/// content `sha`: older generations are deleted and unmapped.
fn wait_single_copy(host: &Host, stem: &str, sha: &str) {
    host.wait_until(
        &format!("exactly one private copy of {stem} ({sha}), mapped"),
        STATE_TIMEOUT,
        |h| {
            let private = copies_of(&h.private_copies(), stem);
            let mapped = copies_of(&h.mapped_copies(), stem);
            (private.len() == 1 && private[0].contains(sha) && mapped == private).then_some(())
        },
    );
}

/// Waits until no private copy of `stem` exists or is mapped.
fn wait_no_copy(host: &Host, stem: &str) {
    host.wait_for(
        &format!("no private copy of {stem}, in the folder or mapped"),
        STATE_TIMEOUT,
        |h| {
            copies_of(&h.private_copies(), stem).is_empty()
                && copies_of(&h.mapped_copies(), stem).is_empty()
        },
    );
}

fn touch(path: &Path) {
    let status = Command::new("touch").arg(path).status().expect("run touch");
    assert!(status.success(), "touch {}: {status}", path.display());
}

/// The line index (within `lines`) of the first line about container `name` stopping.
fn first_stop_of(lines: &[String], name: &str) -> Option<usize> {
    lines.iter().position(|l| {
        (l.contains("container stopping") || l.contains("container stopped"))
            && has_field(l, "container", name)
    })
}

#[test]
fn added_file_loads_and_starts_its_default_container() {
    let dir = PluginDir::new();
    let host = Host::start(&dir);
    barrier(&host, &dir);
    assert!(host.plugins().is_empty(), "{:?}", host.plugins());
    assert!(host.containers().is_empty(), "{:?}", host.containers());

    let bytes = lib_bytes(Lib::Chaos);
    let sha = sha12(&bytes);
    dir.put("libchaos.so", &bytes, Put::Cp);
    let entry = wait_loaded(&host, "libchaos.so", &sha);
    assert_eq!(entry["name"], "chaos", "{entry}");
    assert_eq!(generation(&entry), 1, "{entry}");
    assert!(
        entry["error"].is_null() && entry["error_kind"].is_null(),
        "{entry}"
    );
    let chaos = wait_running_on(&host, "chaos", &sha);
    assert_eq!(generation(&chaos), 1, "{chaos}");
    assert_eq!(chaos["file"], "libchaos.so", "{chaos}");
    assert_eq!(chaos["plugin"], "chaos", "{chaos}");
    assert_eq!(
        loaded_lines(&host.lines(), "libchaos.so").len(),
        1,
        "one `library loaded` line for libchaos.so\n{}",
        host.logs()
    );
    wait_single_copy(&host, "libchaos", &sha);

    // A second file declaring the same plugin is refused; the first keeps running.
    dir.put(
        "libchaos-again.so",
        &versioned_bytes(Lib::Chaos, 1),
        Put::Rename,
    );
    let dup = host.wait_plugin_status("libchaos-again.so", "error", STATE_TIMEOUT);
    assert_eq!(dup["error_kind"], "duplicate_plugin", "{dup}");
    let chaos = host.container("chaos");
    assert_eq!(chaos["state"], "running", "{chaos}");
    assert_eq!(chaos["sha256"], sha.as_str(), "{chaos}");
    assert_eq!(generation(&chaos), 1, "{chaos}");
    wait_single_copy(&host, "libchaos", &sha);
    terminate_cleanly(host);
}

#[test]
fn added_file_starts_the_configured_instances() {
    let mut dir = PluginDir::new();
    dir.write_config(&format!(
        "{}{}",
        echo_entry("web-a", "from a"),
        echo_entry("web-b", "from b")
    ));
    let host = Host::start(&dir);
    barrier(&host, &dir);
    for name in ["web-a", "web-b"] {
        let c = host.container(name);
        assert_ne!(c["state"], "running", "no http-echo file yet: {c}");
    }

    let bytes = lib_bytes(Lib::HttpEcho);
    let sha = sha12(&bytes);
    dir.put("libhttp_echo.so", &bytes, Put::Rename);
    wait_loaded(&host, "libhttp_echo.so", &sha);
    for (name, message) in [("web-a", "from a"), ("web-b", "from b")] {
        let c = wait_running_on(&host, name, &sha);
        assert!(c["last_error"].is_null(), "{c}");
        let (status, body) = http_get(host.echo_addr(name), "/");
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains(message), "{name}: {body:?}");
    }
    assert!(
        host.find_container("http-echo").is_none(),
        "no default instance beside the configured ones: {:?}",
        host.containers()
    );
    terminate_cleanly(host);
}

/// Both plugin files go away by `remove`: the default instance disappears, the configured
/// one stays listed as stopped, libraries are unloaded and their copies deleted. Then the
/// configured plugin's file comes back and its container runs again.
fn removal_stops_unloads_and_forgets(remove: impl Fn(&PluginDir, &str)) {
    let mut dir = PluginDir::with(&[Lib::Chaos, Lib::HttpEcho]);
    dir.write_config(&echo_entry("web", "back again"));
    let host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    host.wait_state("web", "running", STATE_TIMEOUT);
    let echo_sha = sha12(&lib_bytes(Lib::HttpEcho));
    wait_single_copy(&host, "libchaos", &sha12(&lib_bytes(Lib::Chaos)));
    wait_single_copy(&host, "libhttp_echo", &echo_sha);

    let mark = host.mark();
    remove(&dir, "libchaos.so");
    host.wait_log_where("`container stopped container=chaos`", STATE_TIMEOUT, |l| {
        l.contains("container stopped") && has_field(l, "container", "chaos")
    });
    host.wait_log_where(
        "`library unloaded ... mapped=false` for libchaos",
        STATE_TIMEOUT,
        |l| {
            l.contains("library unloaded")
                && l.contains("libchaos")
                && has_field(l, "mapped", "false")
        },
    );
    host.wait_plugin_gone("libchaos.so", STATE_TIMEOUT);
    host.wait_for(
        "the default container chaos to leave /v1/containers",
        STATE_TIMEOUT,
        |h| h.find_container("chaos").is_none(),
    );
    wait_no_copy(&host, "libchaos");
    for (method, path) in [
        ("GET", "/v1/containers/chaos"),
        ("POST", "/v1/containers/chaos/start"),
    ] {
        let (status, body) = if method == "GET" {
            host.get(path)
        } else {
            host.post(path)
        };
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // http-echo was not touched.
    let web = host.container("web");
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(generation(&web), 1, "{web}");
    assert_eq!(first_stop_of(&host.lines_since(mark), "web"), None);

    // A configured container stays listed, stopped, saying why.
    remove(&dir, "libhttp_echo.so");
    let web = host.wait_state("web", "stopped", STATE_TIMEOUT);
    let last = web["last_error"].as_str().unwrap_or_default();
    assert!(
        last.to_lowercase().contains("removed"),
        "last_error should say the file was removed: {web}"
    );
    host.wait_plugin_gone("libhttp_echo.so", STATE_TIMEOUT);
    wait_no_copy(&host, "libhttp_echo");
    assert!(host.plugins().is_empty(), "{:?}", host.plugins());
    assert!(
        host.private_copies().is_empty(),
        "private folder: {:?}",
        host.private_copies()
    );
    // Asking it to start without its file fails cleanly.
    let (status, body) = host.post("/v1/containers/web/start");
    assert!(status < 500, "{status}: {body}");
    assert_ne!(host.state("web"), "running");

    // The file comes back: its configured container runs again, with its config.
    dir.put("libhttp_echo.so", &lib_bytes(Lib::HttpEcho), Put::Cp);
    let web = wait_running_on(&host, "web", &echo_sha);
    assert!(web["last_error"].is_null(), "{web}");
    let addr = host.wait_until("web to listen again", STATE_TIMEOUT, |h| {
        let addrs = h.echo_addrs("web");
        (addrs.len() >= 2).then(|| addrs[addrs.len() - 1])
    });
    let (status, body) = http_get(addr, "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("back again"), "{body:?}");
    terminate_cleanly(host);
}

#[test]
fn removed_file_is_stopped_unloaded_and_forgotten() {
    removal_stops_unloads_and_forgets(|dir, file| dir.remove(file));
}

#[test]
fn file_moved_out_is_stopped_unloaded_and_forgotten() {
    removal_stops_unloads_and_forgets(|dir, file| {
        dir.move_out(file);
    });
}

#[test]
fn removing_a_plugin_stuck_in_stop_does_not_hang_the_host() {
    let mut dir = PluginDir::with(&[Lib::Chaos, Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}{}stop_timeout_ms = 300\n",
        echo_entry("web", "unbothered"),
        chaos_entry("stuck", "hang_in = \"stop\"")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("stuck", "running", STATE_TIMEOUT);
    host.wait_state("web", "running", STATE_TIMEOUT);
    dir.remove("libchaos.so");
    let stuck = host.wait_until("stuck to settle after its file went", STATE_TIMEOUT, |h| {
        h.find_container("stuck")
            .filter(|c| c["state"] != "running" && c["state"] != "stopping")
    });
    assert!(stuck["last_error"].is_string(), "{stuck}");
    // Its library cannot be unloaded (a thread is stuck in it): the host says so.
    host.wait_for("libchaos.so in not_unloaded", STATE_TIMEOUT, |h| {
        h.get_json("/v1/plugins")["not_unloaded"]
            .as_array()
            .is_some_and(|n| n.iter().any(|u| u["file"] == "libchaos.so"))
    });
    // The host goes on: the other plugin serves, a new chaos file is picked up.
    let (status, body) = http_get(host.echo_addr("web"), "/");
    assert_eq!(status, 200, "{body}");
    let v1 = versioned_bytes(Lib::Chaos, 1);
    dir.put("libchaos.so", &v1, Put::Rename);
    wait_loaded(&host, "libchaos.so", &sha12(&v1));
    wait_running_on(&host, "stuck", &sha12(&v1));
    host.signal(balut_tests::Signal::SIGTERM);
    let status = host.wait_exit(balut_tests::EXIT_TIMEOUT);
    assert!(status.code().is_some(), "killed by a signal: {status}");
}

#[test]
fn changed_file_reloads_with_the_same_config() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    dir.write_config(&format!(
        "{}{}{}",
        echo_entry("web", "same config"),
        chaos_entry("chaos-a", ""),
        chaos_entry("chaos-b", "")
    ));
    let host = Host::start(&dir);
    for name in ["web", "chaos-a", "chaos-b"] {
        let c = host.wait_state(name, "running", STATE_TIMEOUT);
        assert_eq!(generation(&c), 1, "{c}");
    }
    let old_sha = sha12(&lib_bytes(Lib::HttpEcho));
    wait_single_copy(&host, "libhttp_echo", &old_sha);

    // A new version of http-echo: web is reloaded, chaos is not touched.
    let mark = host.mark();
    let v1 = versioned_bytes(Lib::HttpEcho, 1);
    let sha = sha12(&v1);
    dir.put("libhttp_echo.so", &v1, Put::TempRename);
    let web = wait_running_on(&host, "web", &sha);
    assert_eq!(generation(&web), 2, "generation goes up by one: {web}");
    assert!(web["last_error"].is_null(), "{web}");
    let entry = wait_loaded(&host, "libhttp_echo.so", &sha);
    assert_eq!(generation(&entry), 2, "{entry}");
    let reloaded = host.wait_log("plugin reloaded", STATE_TIMEOUT);
    assert!(
        has_field(&reloaded, "from_generation", "1") && has_field(&reloaded, "to_generation", "2"),
        "{reloaded}"
    );
    // The new generation was loaded while the old one still ran.
    let lines = host.lines_since(mark);
    let loaded = lines
        .iter()
        .position(|l| l.contains("library loaded") && names_file(l, "libhttp_echo.so"));
    let stopped = first_stop_of(&lines, "web");
    assert!(
        loaded.is_some() && stopped.is_some() && loaded < stopped,
        "expected `library loaded` (gen 2) before web stops: loaded at {loaded:?}, stopping at {stopped:?}\n{}",
        lines.join("\n")
    );
    // Same config: the new instance serves the same message.
    let addr = host.wait_until("web to listen again", STATE_TIMEOUT, |h| {
        let addrs = h.echo_addrs("web");
        (addrs.len() >= 2).then(|| addrs[addrs.len() - 1])
    });
    let (status, body) = http_get(addr, "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("same config"), "{body:?}");
    wait_single_copy(&host, "libhttp_echo", &sha);
    for name in ["chaos-a", "chaos-b"] {
        let c = host.container(name);
        assert_eq!(
            (c["state"].as_str(), generation(&c)),
            (Some("running"), 1),
            "{c}"
        );
        assert_eq!(first_stop_of(&host.lines_since(mark), name), None);
    }

    // A new version of chaos: both of its containers move to generation 2.
    let v1 = versioned_bytes(Lib::Chaos, 1);
    let sha = sha12(&v1);
    dir.put("libchaos.so", &v1, Put::Rename);
    for name in ["chaos-a", "chaos-b"] {
        let c = wait_running_on(&host, name, &sha);
        assert_eq!(generation(&c), 2, "{c}");
    }
    wait_single_copy(&host, "libchaos", &sha);
    terminate_cleanly(host);
}

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
    assert_eq!(refused_lines(&host.lines(), "libcut.so").len(), 1);
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

#[test]
fn plugin_dir_from_the_config_is_watched_too() {
    let mut dir = PluginDir::new();
    // Relative to the config file's folder.
    dir.write_config("[host]\nplugin_dir = \"plugins\"\n");
    let config = dir.config().expect("a config").to_owned();
    let host = Host::spawn(
        vec!["run".into(), "--config".into(), config.into()],
        Some(dir.tmp()),
    );
    barrier(&host, &dir);
    let bytes = lib_bytes(Lib::Chaos);
    dir.put("libchaos.so", &bytes, Put::Cp);
    wait_running_on(&host, "chaos", &sha12(&bytes));
    dir.remove("libchaos.so");
    host.wait_plugin_gone("libchaos.so", STATE_TIMEOUT);
    terminate_cleanly(host);
}

#[test]
fn content_that_fails_to_load_keeps_the_old_generation_running() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&chaos_entry("chaos-a", ""));
    let host = Host::start(&dir);
    let old_sha = sha12(&lib_bytes(Lib::Chaos));
    let c = wait_running_on(&host, "chaos-a", &old_sha);
    assert_eq!(generation(&c), 1, "{c}");

    dir.put("libchaos.so", &not_elf(1), Put::Rename);
    let entry = host.wait_plugin_status("libchaos.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "not_elf", "{entry}");
    assert_eq!(generation(&entry), 1, "the old generation: {entry}");
    let c = host.container("chaos-a");
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(c["sha256"], old_sha.as_str(), "{c}");
    assert_eq!(generation(&c), 1, "{c}");
    wait_single_copy(&host, "libchaos", &old_sha);

    // A good version after the bad one is loaded and runs.
    let v1 = versioned_bytes(Lib::Chaos, 1);
    let sha = sha12(&v1);
    dir.put("libchaos.so", &v1, Put::Rename);
    let c = wait_running_on(&host, "chaos-a", &sha);
    assert!(generation(&c) > 1, "{c}");
    let entry = wait_loaded(&host, "libchaos.so", &sha);
    assert!(
        entry["error"].is_null() && entry["error_kind"].is_null(),
        "{entry}"
    );
    wait_single_copy(&host, "libchaos", &sha);
    terminate_cleanly(host);
}

#[test]
fn restoring_the_running_content_clears_the_error() {
    // An operator puts back the version that still runs (say after a bad deploy): the file
    // matches what is in memory again, so its entry must say "loaded", not the old error.
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&chaos_entry("chaos-a", ""));
    let host = Host::start(&dir);
    let good = lib_bytes(Lib::Chaos);
    let sha = sha12(&good);
    wait_running_on(&host, "chaos-a", &sha);

    for (bad, kind) in [
        (not_elf(1), "not_elf"),
        (lib_bytes(Lib::BrokenStart).to_vec(), "rolled_back"),
    ] {
        dir.put("libchaos.so", &bad, Put::Rename);
        host.wait_plugin(
            "libchaos.so",
            &format!("an error {kind}"),
            STATE_TIMEOUT,
            |p| p["status"] == "error" && p["error_kind"] == kind,
        );
        wait_running_on(&host, "chaos-a", &sha);

        dir.put("libchaos.so", &good, Put::Rename);
        let entry = host.wait_plugin(
            "libchaos.so",
            &format!("loaded again after {kind} (same content as the running generation)"),
            Duration::from_secs(5),
            |p| p["status"] == "loaded",
        );
        assert!(
            entry["error"].is_null() && entry["error_kind"].is_null(),
            "{entry}"
        );
        assert_eq!(entry["sha256"], sha.as_str(), "{entry}");
        let c = host.container("chaos-a");
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["sha256"], sha.as_str(), "{c}");
    }
    terminate_cleanly(host);
}

#[test]
fn version_that_cannot_start_is_rolled_back() {
    let mut dir = PluginDir::with(&[Lib::Chaos, Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}{}{}",
        echo_entry("web", "bystander"),
        chaos_entry("chaos-a", ""),
        chaos_entry("chaos-b", "")
    ));
    let host = Host::start(&dir);
    let old_sha = sha12(&lib_bytes(Lib::Chaos));
    let mut old_version = String::new();
    for name in ["chaos-a", "chaos-b"] {
        let c = wait_running_on(&host, name, &old_sha);
        old_version = c["version"].as_str().unwrap_or_default().to_owned();
    }
    host.wait_state("web", "running", STATE_TIMEOUT);

    let mark = host.mark();
    let broken = lib_bytes(Lib::BrokenStart);
    let broken_sha = sha12(&broken);
    dir.put("libchaos.so", &broken, Put::TempRename);
    host.wait_log("plugin rolled back", STATE_TIMEOUT);
    let entry = host.wait_plugin("libchaos.so", "rolled back", STATE_TIMEOUT, |p| {
        p["error_kind"] == "rolled_back"
    });
    assert_eq!(entry["status"], "error", "{entry}");
    assert_eq!(generation(&entry), 1, "the old generation: {entry}");
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("fixture: this version cannot start"),
        "the new version's start error should show: {entry}"
    );
    for name in ["chaos-a", "chaos-b"] {
        let c = wait_running_on(&host, name, &old_sha);
        assert_eq!(generation(&c), 1, "back on the old generation: {c}");
        assert_eq!(c["version"], old_version.as_str(), "{c}");
    }
    wait_single_copy(&host, "libchaos", &old_sha);
    assert!(
        !host.mapped_copies().iter().any(|c| c.contains(&broken_sha)),
        "the broken generation is still mapped: {:?}",
        host.mapped_copies()
    );
    // The bystander was not touched.
    let web = host.container("web");
    assert_eq!(
        (web["state"].as_str(), generation(&web)),
        (Some("running"), 1),
        "{web}"
    );
    assert_eq!(first_stop_of(&host.lines_since(mark), "web"), None);

    // The next good version goes through.
    let v2 = versioned_bytes(Lib::Chaos, 2);
    let sha = sha12(&v2);
    dir.put("libchaos.so", &v2, Put::TempRename);
    for name in ["chaos-a", "chaos-b"] {
        let c = wait_running_on(&host, name, &sha);
        assert!(generation(&c) > 1, "{c}");
    }
    let entry = wait_loaded(&host, "libchaos.so", &sha);
    assert!(entry["error_kind"].is_null(), "{entry}");
    wait_single_copy(&host, "libchaos", &sha);
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

/// Makes `link` a symlink to `target` atomically (a new link renamed over the old name).
fn symlink_over(target: &Path, link: &Path) {
    let temp = link.with_file_name(format!(
        ".{}.link",
        link.file_name().expect("a file name").to_string_lossy()
    ));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp).expect("create a symlink");
    std::fs::rename(&temp, link).expect("rename the symlink into place");
}

#[test]
fn symlink_into_the_folder_is_followed() {
    let dir = PluginDir::new();
    let store = dir.plugins().join("store/v1");
    std::fs::create_dir_all(&store).expect("create store/v1");
    let v1 = versioned_bytes(Lib::Chaos, 1);
    balut_tests::write_bytes(&store.join("chaos.bin"), &v1);
    std::os::unix::fs::symlink("store/v1/chaos.bin", dir.plugins().join("libchaos.so"))
        .expect("symlink");
    let host = Host::start(&dir);
    let sha = sha12(&v1);
    let entry = wait_loaded(&host, "libchaos.so", &sha);
    assert_eq!(entry["name"], "chaos", "{entry}");
    wait_running_on(&host, "chaos", &sha);

    // Pointing the link at another version (deeper in the folder) reloads.
    let deeper = dir.plugins().join("store/v2/deeper");
    std::fs::create_dir_all(&deeper).expect("create store/v2/deeper");
    let v2 = versioned_bytes(Lib::Chaos, 2);
    balut_tests::write_bytes(&deeper.join("chaos.bin"), &v2);
    let sha = sha12(&v2);
    symlink_over(
        Path::new("store/v2/deeper/chaos.bin"),
        &dir.plugins().join("libchaos.so"),
    );
    let c = wait_running_on(&host, "chaos", &sha);
    assert_eq!(generation(&c), 2, "{c}");
    wait_loaded(&host, "libchaos.so", &sha);
    wait_single_copy(&host, "libchaos", &sha);
    // A link through an absolute path that resolves inside the folder is fine too.
    let abs = dir.plugins().join("store/v1/chaos.bin");
    symlink_over(&abs, &dir.plugins().join("libchaos.so"));
    wait_running_on(&host, "chaos", &sha12(&v1));
    terminate_cleanly(host);
}

#[test]
fn symlink_out_of_the_folder_is_untrusted() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&echo_entry("web", "x"));
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("create outside/");
    balut_tests::write_bytes(&outside.join("libhttp_echo.so"), &lib_bytes(Lib::HttpEcho));
    balut_tests::write_bytes(&outside.join("libticker.so"), &lib_bytes(Lib::Ticker));
    // Relative, escaping with `..`.
    std::os::unix::fs::symlink(
        "../outside/libhttp_echo.so",
        dir.plugins().join("libhttp_echo.so"),
    )
    .expect("symlink");
    let host = Host::start(&dir);
    wait_running_on(&host, "chaos", &sha12(&lib_bytes(Lib::Chaos)));
    let entry = host.wait_plugin_status("libhttp_echo.so", "error", STATE_TIMEOUT);
    assert_untrusted_link(&entry);

    // Added while running, absolute.
    std::os::unix::fs::symlink(
        outside.join("libticker.so"),
        dir.plugins().join("libticker.so"),
    )
    .expect("symlink");
    let entry = host.wait_plugin_status("libticker.so", "error", STATE_TIMEOUT);
    assert_untrusted_link(&entry);

    for stem in ["libhttp_echo", "libticker"] {
        assert!(
            copies_of(&host.private_copies(), stem).is_empty()
                && copies_of(&host.mapped_copies(), stem).is_empty(),
            "{stem} was copied or mapped"
        );
    }
    assert_ne!(host.container("web")["state"], "running");
    let chaos = host.container("chaos");
    assert_eq!(chaos["state"], "running", "{chaos}");
    terminate_cleanly(host);
}

fn assert_untrusted_link(entry: &Value) {
    assert_eq!(entry["error_kind"], "untrusted", "{entry}");
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("outside"),
        "the error should say the link points outside the folder: {entry}"
    );
}

/// Puts chaos into an empty, watched folder `how`, then a new version over it `how`, then
/// removes it; each step lands.
fn deliver(how: Put) {
    let dir = PluginDir::new();
    if how == Put::MvOtherFs && dir.other_fs().is_none() {
        eprintln!("skipped: /dev/shm is missing or on the plugin folder's file system");
        return;
    }
    let host = Host::start(&dir);
    barrier(&host, &dir);
    let path = dir.plugins().join("libchaos.so");

    let v1 = versioned_bytes(Lib::Chaos, 1);
    let sha1 = sha12(&v1);
    dir.put("libchaos.so", &v1, how);
    wait_loaded(&host, "libchaos.so", &sha1);
    let first = wait_running_on(&host, "chaos", &sha1);

    let inode = std::fs::metadata(&path).expect("stat libchaos.so").ino();
    let v2 = versioned_bytes(Lib::Chaos, 2);
    let sha2 = sha12(&v2);
    dir.put("libchaos.so", &v2, how);
    if how == Put::InPlace {
        let now = std::fs::metadata(&path).expect("stat libchaos.so").ino();
        assert_eq!(now, inode, "an in-place write keeps the inode");
    }
    let second = wait_running_on(&host, "chaos", &sha2);
    assert_eq!(generation(&second), generation(&first) + 1, "{second}");
    wait_loaded(&host, "libchaos.so", &sha2);
    wait_single_copy(&host, "libchaos", &sha2);
    // Only the two whole versions were ever loaded.
    let loaded = loaded_lines(&host.lines(), "libchaos.so");
    assert_eq!(loaded.len(), 2, "{loaded:#?}");

    dir.remove("libchaos.so");
    host.wait_plugin_gone("libchaos.so", STATE_TIMEOUT);
    host.wait_for("chaos to leave /v1/containers", STATE_TIMEOUT, |h| {
        h.find_container("chaos").is_none()
    });
    wait_no_copy(&host, "libchaos");
    terminate_cleanly(host);
}

#[test]
fn put_by_cp() {
    deliver(Put::Cp);
}

#[test]
fn put_by_mv_within_the_file_system() {
    deliver(Put::Rename);
}

#[test]
fn put_by_mv_from_another_file_system() {
    deliver(Put::MvOtherFs);
}

#[test]
fn put_by_temp_file_renamed_over() {
    deliver(Put::TempRename);
}

#[test]
fn put_by_writing_in_place() {
    deliver(Put::InPlace);
}

#[test]
fn rename_within_the_folder_moves_the_plugin_to_its_new_name() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    let host = Host::start(&dir);
    let sha = sha12(&lib_bytes(Lib::Chaos));
    wait_running_on(&host, "chaos", &sha);
    // To a name sorting before the old one, and then to one sorting after it.
    for (from, to) in [("libchaos.so", "a-chaos.so"), ("a-chaos.so", "z-chaos.so")] {
        std::fs::rename(dir.plugins().join(from), dir.plugins().join(to)).expect("rename");
        host.wait_plugin_gone(from, STATE_TIMEOUT);
        wait_loaded(&host, to, &sha);
        host.wait_until(&format!("chaos to run from {to}"), STATE_TIMEOUT, |h| {
            h.find_container("chaos")
                .filter(|c| c["state"] == "running" && c["file"] == to)
        });
        let plugins = host.plugins();
        assert_eq!(plugins.len(), 1, "{plugins:?}");
        wait_single_copy(&host, to.trim_end_matches(".so"), &sha);
        wait_no_copy(&host, from.trim_end_matches(".so"));
    }
    terminate_cleanly(host);
}

#[test]
fn fifo_named_like_a_plugin_does_not_block_the_host() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    let host = Host::start(&dir);
    let sha = sha12(&lib_bytes(Lib::Chaos));
    wait_running_on(&host, "chaos", &sha);
    let fifo = dir.plugins().join("pipe.so");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let entry = host.wait_plugin_status("pipe.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "not_a_file", "{entry}");
    // The host still follows the folder.
    let v1 = versioned_bytes(Lib::Chaos, 1);
    dir.put("libchaos.so", &v1, Put::Rename);
    wait_running_on(&host, "chaos", &sha12(&v1));
    std::fs::remove_file(&fifo).expect("rm the fifo");
    host.wait_plugin_gone("pipe.so", STATE_TIMEOUT);
    terminate_cleanly(host);
}

/// Writes `bytes` to `path` (created, or truncated in place) in two halves with a 1.5 s
/// pause between, checking every 50 ms during the pause that `during` holds.
fn write_slowly(path: &Path, bytes: &[u8], mut during: impl FnMut()) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(path)
        .expect("open for writing");
    let half = bytes.len() / 2;
    file.write_all(&bytes[..half])
        .expect("write the first half");
    file.flush().expect("flush");
    file.sync_data().expect("sync");
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        during();
        std::thread::sleep(Duration::from_millis(50));
    }
    file.write_all(&bytes[half..])
        .expect("write the second half");
}

#[test]
fn slow_writer_is_never_loaded_half_written() {
    let dir = PluginDir::new();
    let host = Host::start(&dir);
    barrier(&host, &dir);
    let path = dir.plugins().join("libchaos.so");

    // A new file, written slowly.
    let v1 = versioned_bytes(Lib::Chaos, 1);
    let sha1 = sha12(&v1);
    write_slowly(&path, &v1, || {
        let loaded = loaded_lines(&host.lines(), "libchaos.so");
        assert!(loaded.is_empty(), "loaded while half-written: {loaded:?}");
    });
    wait_loaded(&host, "libchaos.so", &sha1);
    wait_running_on(&host, "chaos", &sha1);
    let refused = refused_lines(&host.lines(), "libchaos.so");
    assert!(
        refused.len() <= 1 && refused.iter().all(|l| l.contains("truncated")),
        "at most one report, as truncated: {refused:#?}"
    );

    // A new version written slowly over it in place: the old one runs meanwhile.
    let mark = host.mark();
    let v2 = versioned_bytes(Lib::Chaos, 2);
    let sha2 = sha12(&v2);
    write_slowly(&path, &v2, || {
        let lines = host.lines_since(mark);
        let loaded = loaded_lines(&lines, "libchaos.so");
        assert!(loaded.is_empty(), "loaded while half-written: {loaded:?}");
        let chaos = host.container("chaos");
        assert_eq!(
            (chaos["state"].as_str(), chaos["sha256"].as_str()),
            (Some("running"), Some(sha1.as_str())),
            "the old version should run while the new one is written: {chaos}"
        );
    });
    wait_loaded(&host, "libchaos.so", &sha2);
    wait_running_on(&host, "chaos", &sha2);
    wait_single_copy(&host, "libchaos", &sha2);
    let refused = refused_lines(&host.lines_since(mark), "libchaos.so");
    assert!(
        refused.len() <= 1 && refused.iter().all(|l| l.contains("truncated")),
        "at most one report, as truncated: {refused:#?}"
    );
    let loaded = loaded_lines(&host.lines(), "libchaos.so");
    assert_eq!(loaded.len(), 2, "{loaded:#?}");
    terminate_cleanly(host);
}

#[test]
fn periodic_rescan_notices_what_the_watcher_cannot_see() {
    // The folder is watched, its sub-folders are not: a link's target changing inside
    // `store/` makes no event in the plugin folder, only a rescan can notice.
    let mut dir = PluginDir::new();
    dir.write_config("[host]\nrescan_interval_ms = 300\n");
    let store = dir.plugins().join("store");
    std::fs::create_dir(&store).expect("create store/");
    let v1 = versioned_bytes(Lib::Chaos, 1);
    balut_tests::write_bytes(&store.join("chaos.bin"), &v1);
    std::os::unix::fs::symlink("store/chaos.bin", dir.plugins().join("libchaos.so"))
        .expect("symlink");
    let host = Host::start(&dir);
    wait_running_on(&host, "chaos", &sha12(&v1));

    let v2 = versioned_bytes(Lib::Chaos, 2);
    let temp = store.join("chaos.bin.new");
    balut_tests::write_bytes(&temp, &v2);
    std::fs::rename(&temp, store.join("chaos.bin")).expect("rename in store/");
    let started = Instant::now();
    let c = wait_running_on(&host, "chaos", &sha12(&v2));
    eprintln!("[rescan] noticed in {:?}", started.elapsed());
    assert_eq!(generation(&c), 2, "{c}");
    terminate_cleanly(host);
}

mod churn {
    //! 100 changes in about a second over 8 file names, then the host must match the folder.

    use super::*;

    /// What a file in the churn holds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Content {
        /// Version `n` of a good plugin.
        Good(Lib, u64),
        /// Not an ELF file.
        NotElf(u64),
        /// A cut-off prefix of a library.
        Truncated(Lib, u64),
        /// Version `n` of a library the host refuses whole (no export, wrong interface).
        Refused(Lib, u64),
        /// The chaos version whose start fails (rolled back).
        BrokenStart(u64),
    }

    impl Content {
        fn bytes(self) -> Vec<u8> {
            match self {
                Content::Good(lib, n) | Content::Refused(lib, n) => versioned_bytes(lib, n),
                Content::BrokenStart(n) => versioned_bytes(Lib::BrokenStart, n),
                Content::NotElf(n) => not_elf(n),
                Content::Truncated(lib, n) => {
                    let bytes = lib_bytes(lib);
                    let len = bytes.len() / 2 + usize::try_from(n).expect("small n") * 64;
                    bytes[..len].to_vec()
                }
            }
        }

        /// The error kind the host reports for this content (`None`: it loads).
        fn error_kind(self) -> Option<&'static str> {
            match self {
                Content::Good(..) | Content::BrokenStart(_) => None,
                Content::NotElf(_) => Some("not_elf"),
                Content::Truncated(..) => Some("truncated"),
                Content::Refused(Lib::WrongInterface, _) => Some("interface_mismatch"),
                Content::Refused(..) => Some("missing_export"),
            }
        }
    }

    const FILES: [&str; 8] = [
        "libchaos.so",
        "libhttp_echo.so",
        "libticker.so",
        "libwrong.so",
        "libnoexport.so",
        "junk.so",
        "libcut.so",
        "libmix.so",
    ];

    /// The containers of the good plugin a slot can hold.
    fn containers_of(slot: usize) -> &'static [&'static str] {
        match slot {
            0 => &["chaos"],
            1 => &["web"],
            2 => &["ticker"],
            _ => &[],
        }
    }

    /// A new content for `slot`; `pick` chooses among the slot's kinds, `n` is unique.
    fn content_for(slot: usize, n: u64, pick: u64, broken_allowed: bool) -> Content {
        match slot {
            0 => match pick % 5 {
                0 => Content::NotElf(n),
                1 | 2 if broken_allowed => Content::BrokenStart(n),
                _ => Content::Good(Lib::Chaos, n),
            },
            1 => match pick % 5 {
                0 => Content::Truncated(Lib::HttpEcho, n),
                _ => Content::Good(Lib::HttpEcho, n),
            },
            2 => Content::Good(Lib::Ticker, n),
            3 => Content::Refused(Lib::WrongInterface, n),
            4 => Content::Refused(Lib::NoExport, n),
            5 => Content::NotElf(n),
            6 => Content::Truncated(Lib::Chaos, n),
            _ => match pick % 3 {
                0 => Content::NotElf(n),
                1 => Content::Truncated(Lib::Ticker, n),
                _ => Content::Refused(Lib::NoExport, n),
            },
        }
    }

    /// xorshift64*: a small deterministic generator, so a failing sequence can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// What differs between the host's view and the folder (empty: converged).
    fn differences(host: &Host, state: &[Option<Content>; 8]) -> Vec<String> {
        let body = host.get_json("/v1/plugins");
        let plugins = body["plugins"].as_array().cloned().unwrap_or_default();
        let containers = host.containers();
        let private = host.private_copies();
        let mapped = host.mapped_copies();
        let mut problems = Vec::new();
        let entry = |file: &str| plugins.iter().find(|p| p["file"] == file);
        let container = |name: &str| containers.iter().find(|c| c["name"] == name);

        for p in &plugins {
            let status = p["status"].as_str().unwrap_or_default();
            if !["loading", "loaded", "unloaded", "error", "unloading"].contains(&status) {
                problems.push(format!("unknown status {status:?}: {p}"));
            }
            let file = p["file"].as_str().unwrap_or_default();
            let present = FILES
                .iter()
                .zip(state)
                .any(|(f, c)| *f == file && c.is_some());
            if !present {
                problems.push(format!("listed but not in the folder: {p}"));
            }
        }
        for (slot, (file, content)) in FILES.iter().zip(state).enumerate() {
            let stem = file.trim_end_matches(".so");
            let copies = copies_of(&private, stem);
            let running: Vec<&Value> = containers_of(slot)
                .iter()
                .filter_map(|n| container(n))
                .filter(|c| c["state"] == "running")
                .collect();
            match content {
                None => {
                    if let Some(p) = entry(file) {
                        problems.push(format!("{file} was removed but is listed: {p}"));
                    }
                    for name in containers_of(slot) {
                        match container(name) {
                            Some(c) if slot == 0 => {
                                problems.push(format!(
                                    "default container of a removed file is listed: {c}"
                                ));
                            }
                            Some(c) if c["state"] == "running" || c["state"] == "starting" => {
                                problems.push(format!("container of a removed file runs: {c}"));
                            }
                            None if slot != 0 => {
                                problems.push(format!("configured container {name} is not listed"));
                            }
                            _ => {}
                        }
                    }
                    if !copies.is_empty() {
                        problems.push(format!("{file} was removed, copies remain: {copies:?}"));
                    }
                }
                Some(content) => {
                    let sha = sha12(&content.bytes());
                    match (content.error_kind(), entry(file)) {
                        (_, None) => problems.push(format!("{file} is not listed")),
                        (None, Some(p)) => {
                            if p["status"] != "loaded" || p["sha256"] != sha.as_str() {
                                problems.push(format!("{file} should be loaded with {sha}: {p}"));
                            }
                            for name in containers_of(slot) {
                                match container(name) {
                                    Some(c)
                                        if c["state"] == "running"
                                            && c["sha256"] == sha.as_str()
                                            && c["file"] == *file => {}
                                    other => problems.push(format!(
                                        "{name} should run on {file} {sha}: {other:?}"
                                    )),
                                }
                            }
                            if copies.len() != 1 || !copies[0].contains(&sha) {
                                problems.push(format!(
                                    "{file}: expected one private copy of {sha}: {copies:?}"
                                ));
                            }
                        }
                        (Some(kind), Some(p)) => {
                            if p["status"] != "error" || p["error_kind"] != kind {
                                problems.push(format!("{file} should be an error {kind}: {p}"));
                            }
                            // An older generation may keep running; then it has one copy.
                            if copies.len() != running.len().min(1) {
                                problems.push(format!(
                                    "{file}: {} running containers but copies {copies:?}",
                                    running.len()
                                ));
                            }
                        }
                    }
                }
            }
        }
        let stray: Vec<&String> = mapped.iter().filter(|m| !private.contains(*m)).collect();
        if !stray.is_empty() {
            problems.push(format!(
                "mapped copies of removed or replaced generations: {stray:?}"
            ));
        }
        let not_unloaded = body["not_unloaded"].as_array().cloned().unwrap_or_default();
        if !not_unloaded.is_empty() {
            problems.push(format!("not unloaded: {not_unloaded:?}"));
        }
        problems
    }

    /// Polls until the host matches the folder; returns how long that took.
    fn converge(host: &Host, state: &[Option<Content>; 8], what: &str) -> Duration {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < STATE_TIMEOUT {
            last = differences(host, state);
            if last.is_empty() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{what}: the host did not match the folder within {STATE_TIMEOUT:?}:\n{}\nfolder: {state:?}\nhost output:\n{}",
            last.join("\n"),
            host.logs()
        );
    }

    #[test]
    fn hundred_changes_in_a_second_converge() {
        let seed = std::env::var("BALUT_CHURN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x05ee_dba1_u64);
        let mut rng = Rng(seed.max(1));
        let mut dir = PluginDir::new();
        let ticks = dir.path().join("ticks.log");
        dir.write_config(&format!(
            "{}{}",
            echo_entry("web", "churn"),
            ticker_entry("ticker", &ticks, 1000)
        ));
        let mut next_n = 0u64;
        let mut n = || {
            next_n += 1;
            next_n
        };
        let mut state: [Option<Content>; 8] = [None; 8];
        for (slot, file) in FILES.iter().enumerate() {
            let content = content_for(slot, n(), 2, false);
            dir.put(file, &content.bytes(), Put::Rename);
            state[slot] = Some(content);
        }
        let host = Host::start(&dir);
        let took = converge(&host, &state, "start-up");
        eprintln!("[churn] start-up converged in {took:?}");

        let ways: Vec<Put> = Put::ALL
            .into_iter()
            .filter(|w| *w != Put::MvOtherFs || dir.other_fs().is_some())
            .collect();
        let mut ops = Vec::new();
        let mut slowest_answer = Duration::ZERO;
        let started = Instant::now();
        for op in 0..100 {
            let slot = usize::try_from(rng.below(8)).expect("small");
            let file = FILES[slot];
            let how = ways[usize::try_from(rng.below(ways.len() as u64)).expect("small")];
            if state[slot].is_some() && rng.below(4) == 0 {
                if rng.below(2) == 0 {
                    dir.remove(file);
                    ops.push(format!("{op}: rm {file}"));
                } else {
                    dir.move_out(file);
                    ops.push(format!("{op}: mv {file} out"));
                }
                state[slot] = None;
            } else {
                let content = content_for(slot, n(), rng.next(), op < 80);
                dir.put(file, &content.bytes(), how);
                ops.push(format!("{op}: {how:?} {file} <- {content:?}"));
                state[slot] = Some(content);
            }
            if op % 10 == 9 {
                // The API answers throughout.
                let asked = Instant::now();
                host.get_json("/v1/plugins");
                slowest_answer = slowest_answer.max(asked.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // A version that cannot start has no defined end state of its own: replace it.
        if let Some(Content::BrokenStart(_)) = state[0] {
            let content = Content::Good(Lib::Chaos, n());
            dir.put(FILES[0], &content.bytes(), Put::Rename);
            ops.push(format!("final: Rename {} <- {content:?}", FILES[0]));
            state[0] = Some(content);
        }
        let churn_took = started.elapsed();
        eprintln!(
            "[churn] seed {seed:#x}: {} changes in {churn_took:?}:\n{}",
            ops.len(),
            ops.join("\n")
        );
        eprintln!("[churn] the folder now: {state:?}");
        eprintln!("[churn] slowest API answer during the churn: {slowest_answer:?}");

        let took = converge(&host, &state, "after the churn");
        eprintln!("[churn] converged {took:?} after the last change (goal: 2 s)");
        // And it stays that way.
        std::thread::sleep(Duration::from_millis(500));
        let problems = differences(&host, &state);
        assert!(
            problems.is_empty(),
            "the host drifted after converging:\n{}\n{}",
            problems.join("\n"),
            host.logs()
        );
        terminate_cleanly(host);
    }
}
