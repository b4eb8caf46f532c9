//! Symlinks: followed when they lead inside the plugin folder, refused when they lead out;
//! periodic rescans notice what the watcher cannot.

use std::path::Path;
use std::time::Instant;

use balut_tests::{Host, Lib, PluginDir, STATE_TIMEOUT, lib_bytes, sha12, versioned_bytes};
use serde_json::Value;

use super::{copies_of, generation, wait_loaded, wait_running_on, wait_single_copy};
use crate::{echo_entry, terminate_cleanly};

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
