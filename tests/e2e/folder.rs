//! The plugin folder itself going away and coming back: reported while it is gone, watched
//! again when it is back, so hot plug stays as fast as before. Rescans are every ten
//! minutes here, so only the watch can pick up a new file within the tests' bounds.

use std::path::Path;

use balut_tests::{Host, Lib, PluginDir, STATE_TIMEOUT, set_mode};
use serde_json::Value;

const NO_RESCANS: &str = "[host]\nrescan_interval_ms = 600000\n";

fn folder(host: &Host) -> Value {
    host.get_json("/v1/plugins")["folder"].clone()
}

fn wait_lost(host: &Host) {
    host.wait_until(
        "the plugin folder to be reported lost",
        STATE_TIMEOUT,
        |h| {
            let folder = folder(h);
            (folder["error"].is_string() && folder["watching"] == false).then_some(())
        },
    );
    let (status, body) = host.get("/readyz");
    assert_eq!(status, 503, "/readyz while the folder is gone: {body}");
    assert_eq!(body["status"], "plugin folder lost", "{body}");
    assert!(
        host.lines_with(&["plugin folder is gone"]).len() == 1,
        "one warning names the loss:\n{}",
        host.logs()
    );
}

fn wait_watched(host: &Host) {
    host.wait_until(
        "the plugin folder to be watched again",
        STATE_TIMEOUT,
        |h| {
            let folder = folder(h);
            (folder["error"].is_null() && folder["watching"] == true).then_some(())
        },
    );
}

/// A file put into the folder is seen through the watch (rescans are far away).
fn hot_plug_works(host: &Host, dir: &PluginDir, lib: Lib) {
    dir.add(lib);
    host.wait_until(
        &format!("{} to be picked up through the watch", lib.file_name()),
        STATE_TIMEOUT,
        |h| h.find_plugin(lib.file_name()),
    );
}

fn recreate(plugins: &Path) {
    std::fs::create_dir(plugins).expect("create the plugin folder again");
    set_mode(plugins, 0o755);
}

#[test]
fn a_folder_renamed_away_and_back_is_watched_again() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(NO_RESCANS);
    let host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    assert_eq!(folder(&host)["watching"], true, "{}", folder(&host));

    let away = dir.path().join("plugins.away");
    std::fs::rename(dir.plugins(), &away).expect("rename the folder away");
    wait_lost(&host);
    assert_eq!(host.state("chaos"), "running", "its plugins keep running");

    std::fs::rename(&away, dir.plugins()).expect("rename the folder back");
    wait_watched(&host);
    hot_plug_works(&host, &dir, Lib::NeedsDb);
}

#[test]
fn a_folder_deleted_and_created_again_is_watched_again() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(NO_RESCANS);
    let host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);

    std::fs::remove_dir_all(dir.plugins()).expect("delete the folder");
    wait_lost(&host);

    recreate(&dir.plugins());
    wait_watched(&host);
    hot_plug_works(&host, &dir, Lib::NeedsDb);
    hot_plug_works(&host, &dir, Lib::Chaos);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
}

#[test]
fn a_folder_replaced_by_a_symlink_is_watched_again() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(NO_RESCANS);
    let host = Host::start(&dir);
    host.wait_state("chaos", "running", STATE_TIMEOUT);

    let elsewhere = dir.path().join("elsewhere");
    std::fs::rename(dir.plugins(), &elsewhere).expect("move the folder");
    wait_lost(&host);
    std::os::unix::fs::symlink(&elsewhere, dir.plugins()).expect("symlink it back");
    wait_watched(&host);
    hot_plug_works(&host, &dir, Lib::NeedsDb);
}
