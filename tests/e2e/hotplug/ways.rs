//! Every way of putting a file into the folder lands, and a half-written file is never
//! loaded.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use balut_tests::{Host, Lib, PluginDir, Put, STATE_TIMEOUT, lib_bytes, sha12, versioned_bytes};

use super::{
    generation, loaded_lines, refused_lines, wait_loaded, wait_no_copy, wait_running_on,
    wait_single_copy,
};
use crate::{barrier, terminate_cleanly};

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
    // Only the two whole versions were ever loaded (log lines arrive through a pipe: they
    // can trail the state the API already shows).
    host.wait_for("the second `library loaded` line", STATE_TIMEOUT, |h| {
        loaded_lines(&h.lines(), "libchaos.so").len() >= 2
    });
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
    host.wait_for("the second `library loaded` line", STATE_TIMEOUT, |h| {
        loaded_lines(&h.lines(), "libchaos.so").len() >= 2
    });
    let loaded = loaded_lines(&host.lines(), "libchaos.so");
    assert_eq!(loaded.len(), 2, "{loaded:#?}");
    terminate_cleanly(host);
}
