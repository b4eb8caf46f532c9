//! Hot plug: `balut run` watches its plugin folder. Files added are loaded and their
//! containers started; files changed are reloaded (the old generation keeps running if the
//! new content does not load, and comes back if the new containers do not start); files
//! removed are stopped, unloaded and forgotten. Every way of putting a file there works,
//! and a burst of changes converges to what the folder holds.

use std::time::Duration;

use balut_tests::{
    Host, Lib, PluginDir, Put, STATE_TIMEOUT, field_values, has_field, http_get, lib_bytes, sha12,
    versioned_bytes,
};
use serde_json::Value;

pub(crate) use crate::churn_model::{copies_of, not_elf};
use crate::{barrier, chaos_entry, echo_entry, terminate_cleanly};

mod churn;
mod links;
mod reports;
mod ways;

/// The `generation` of a container or plugin entry.
pub(crate) fn generation(v: &Value) -> u64 {
    v["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no generation: {v}"))
}

/// Whether a log line is about plugin file `file` (`file=NAME`, or a path ending in it).
pub(crate) fn names_file(line: &str, file: &str) -> bool {
    let suffix = format!("/{file}");
    field_values(line, "file")
        .iter()
        .any(|v| v == file || v.ends_with(&suffix))
}

/// `library loaded` lines of `file` among `lines`.
pub(crate) fn loaded_lines(lines: &[String], file: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("library loaded") && names_file(l, file))
        .cloned()
        .collect()
}

/// `plugin file refused` lines of `file` among `lines`.
pub(crate) fn refused_lines(lines: &[String], file: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("plugin file refused") && names_file(l, file))
        .cloned()
        .collect()
}

/// Waits until container `name` runs on content `sha` and returns it.
pub(crate) fn wait_running_on(host: &Host, name: &str, sha: &str) -> Value {
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
pub(crate) fn wait_loaded(host: &Host, file: &str, sha: &str) -> Value {
    host.wait_plugin(
        file,
        &format!("loaded with content {sha}"),
        STATE_TIMEOUT,
        |p| p["status"] == "loaded" && p["sha256"] == sha,
    )
}

/// Waits until exactly one private copy of `stem` exists and is mapped, and it is of
/// content `sha`: older generations are deleted and unmapped.
pub(crate) fn wait_single_copy(host: &Host, stem: &str, sha: &str) {
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
pub(crate) fn wait_no_copy(host: &Host, stem: &str) {
    host.wait_for(
        &format!("no private copy of {stem}, in the folder or mapped"),
        STATE_TIMEOUT,
        |h| {
            copies_of(&h.private_copies(), stem).is_empty()
                && copies_of(&h.mapped_copies(), stem).is_empty()
        },
    );
}

/// The line index (within `lines`) of the first line about container `name` stopping.
pub(crate) fn first_stop_of(lines: &[String], name: &str) -> Option<usize> {
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
    // Log lines arrive through a pipe: they can trail the state the API already shows.
    host.wait_for("the `library loaded` line", STATE_TIMEOUT, |h| {
        !loaded_lines(&h.lines(), "libchaos.so").is_empty()
    });
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
