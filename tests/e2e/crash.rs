//! Crashes in plugin code and the private copy folder (issue 11, items 6 and 7).
//!
//! A crash in a plugin ends the host: these tests check that one line names the container
//! and generation whose code did it, that the process still dies by the signal (or, for an
//! `exit()`, with a non-zero code), that the next start removes the copy folders of hosts
//! that died, and that problems of the copy folder are reported as such.
//!
//! The tests that need a file system of their own (a small tmpfs, a `noexec` one) mount it,
//! which only root can: run as another user they say they are skipped and pass.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use balut_tests::{
    EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, lib_bytes, run_balut, toml_str,
};

use crate::chaos_entry;

/// A host whose config has a chaos container `victim` with `config`; the chaos file arrives
/// once the host is up, so the crash happens while the host serves.
fn host_with_victim(config: &str) -> (PluginDir, Host) {
    let mut dir = PluginDir::new();
    dir.write_config(&chaos_entry("victim", config));
    let host = Host::start(&dir);
    dir.add(Lib::Chaos);
    (dir, host)
}

/// Waits for the host to end, returning how.
fn ended(host: &mut Host) -> ExitStatus {
    host.wait_exit(EXIT_TIMEOUT)
}

/// The host's lines that start with `balut: ` (the crash and exit lines).
fn crash_lines(host: &Host) -> Vec<String> {
    host.lines()
        .into_iter()
        .filter(|l| l.starts_with("balut: "))
        .collect()
}

#[test]
fn exit_in_plugin_code_ends_the_host_with_70_naming_the_container() {
    let (_dir, mut host) = host_with_victim("exit_in = \"start\", exit_code = 0");
    let status = ended(&mut host);
    assert_eq!(
        status.code(),
        Some(70),
        "an exit(0) from plugin code must not end the host cleanly ({status})\n{}",
        host.logs()
    );
    assert_eq!(
        crash_lines(&host),
        [
            "balut: container `victim` (generation 1, thread balut:victim) called exit(0); \
          exiting with code 70"
        ],
        "{}",
        host.logs()
    );
}

#[test]
fn a_segfault_in_plugin_code_names_the_container_and_kills_by_sigsegv() {
    let (_dir, mut host) = host_with_victim("segfault_in = \"start\"");
    let status = ended(&mut host);
    assert_eq!(
        status.signal(),
        Some(Signal::SIGSEGV as i32),
        "{status}\n{}",
        host.logs()
    );
    assert_eq!(
        crash_lines(&host),
        [
            "balut: fatal signal SIGSEGV at address 0x8 in container `victim` \
          (generation 1, thread balut:victim); exiting"
        ],
        "{}",
        host.logs()
    );
}

#[test]
fn an_abort_in_plugin_code_names_the_container_and_kills_by_sigabrt() {
    let (_dir, mut host) = host_with_victim("abort_in = \"start\"");
    let status = ended(&mut host);
    assert_eq!(
        status.signal(),
        Some(Signal::SIGABRT as i32),
        "{status}\n{}",
        host.logs()
    );
    assert_eq!(
        crash_lines(&host),
        [
            "balut: fatal signal SIGABRT in container `victim` (generation 1, thread \
          balut:victim); exiting"
        ],
        "{}",
        host.logs()
    );
}

#[test]
fn a_stack_overflow_in_plugin_code_is_named_as_such() {
    let (_dir, mut host) = host_with_victim("overflow_stack_in = \"start\"");
    let status = ended(&mut host);
    // std's own report follows the line and aborts; either way a signal ends the host.
    assert!(
        [Signal::SIGSEGV as i32, Signal::SIGABRT as i32].contains(&status.signal().unwrap_or(0)),
        "{status}\n{}",
        host.logs()
    );
    assert_eq!(
        crash_lines(&host),
        [
            "balut: fatal signal SIGSEGV (stack overflow) in container `victim` \
          (generation 1, thread balut:victim); exiting"
        ],
        "one line, not one per signal\n{}",
        host.logs()
    );
}

/// A pid no process has (one just reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("run true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
}

fn make_dir_with_file(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    std::fs::write(dir.join("libchaos-g1-000000000000.so"), b"x").expect("write a file");
}

#[test]
fn the_next_start_removes_copy_folders_of_dead_hosts_only() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    let mut killed = Host::start(&dir);
    killed.wait_plugin_status("libchaos.so", "loaded", STATE_TIMEOUT);
    let left = killed.private_dir();
    killed.signal(Signal::SIGKILL);
    ended(&mut killed);
    assert!(left.is_dir(), "SIGKILL leaves {}", left.display());

    // Look-alikes that must stay: a live pid's, an older host's (no pid), a symlink with a
    // dead pid's name (never followed), another user's (when root can make one).
    let tmp = dir.tmp();
    let live = tmp.join(format!("balut-{}-live01", std::process::id()));
    make_dir_with_file(&live);
    let legacy = tmp.join("balut-Ab12Cd");
    make_dir_with_file(&legacy);
    let outside = dir.path().join("outside");
    make_dir_with_file(&outside);
    let link = tmp.join(format!("balut-{}-link01", dead_pid()));
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    let foreign = tmp.join(format!("balut-{}-other1", dead_pid()));
    make_dir_with_file(&foreign);
    let root = nix::unistd::geteuid().is_root();
    let foreign_owned = root && nix::unistd::chown(&foreign, Some(65534.into()), None).is_ok();
    if !foreign_owned {
        std::fs::remove_dir_all(&foreign).expect("remove the folder no other user owns");
    }

    let running = Host::start(&dir);
    let removed =
        running.lines_with(&["removed a private copy folder left by a host that is gone"]);
    assert_eq!(removed.len(), 1, "{removed:#?}\n{}", running.logs());
    assert!(
        removed[0].contains(&left.display().to_string()),
        "the line names the folder: {removed:?}"
    );
    assert!(!left.exists(), "{} is still there", left.display());
    for kept in [&live, &legacy, &link, &outside] {
        assert!(
            kept.symlink_metadata().is_ok(),
            "{} was removed\n{}",
            kept.display(),
            running.logs()
        );
    }
    assert!(outside.join("libchaos-g1-000000000000.so").exists());
    assert_eq!(
        foreign.exists(),
        foreign_owned,
        "another user's folder is kept"
    );

    // A live host's folder is kept by the next start, whatever its pid says.
    let mine = running.private_dir();
    let next = Host::start(&dir);
    assert!(
        mine.is_dir(),
        "a running host's folder was removed\n{}",
        next.logs()
    );
    assert!(
        next.lines_with(&["removed a private copy folder"])
            .is_empty(),
        "{}",
        next.logs()
    );
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs with `options` on `at` (created), or says why not (not root, no
    /// permission to mount).
    fn tmpfs(at: &Path, options: &str) -> Result<Mount, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the tests do not run as root, so they cannot mount a tmpfs".into());
        }
        std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
        mount(&["-t", "tmpfs", "-o", options, "tmpfs"], at)?;
        Ok(Mount(at.to_owned()))
    }

    fn remount(&self, options: &str) {
        let options = format!("remount,{options}");
        mount(&["-o", &options], &self.0).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stdin(Stdio::null())
            .output();
    }
}

fn mount(args: &[&str], at: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(at)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} {} failed: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Mounts a tmpfs for `test` or prints why the test is skipped.
fn tmpfs_or_skip(test: &str, at: &Path, options: &str) -> Option<Mount> {
    match Mount::tmpfs(at, options) {
        Ok(mount) => Some(mount),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// Writes a config that puts the copies in `copies`.
fn set_copy_dir(dir: &mut PluginDir, copies: &Path) {
    dir.write_config(&format!(
        "[host]\ncopy_dir = {}\n",
        toml_str(copies.to_str().expect("temp paths are UTF-8"))
    ));
}

#[test]
fn a_full_copy_dir_is_named_leaves_no_partial_copy_and_a_retry_loads() {
    let mut dir = PluginDir::new();
    let copies = dir.path().join("copies");
    // Half the plugin's size: the copy fails midway.
    let half_kib = lib_bytes(Lib::Chaos).len() / 2 / 1024;
    let Some(mount) = tmpfs_or_skip(
        "a_full_copy_dir_is_named_leaves_no_partial_copy_and_a_retry_loads",
        &copies,
        &format!("size={half_kib}k,mode=0755"),
    ) else {
        return;
    };
    set_copy_dir(&mut dir, &copies);
    let host = Host::start(&dir);
    let private = host.private_dir();
    assert!(private.starts_with(&copies), "{}", private.display());
    dir.add(Lib::Chaos);
    let entry = host.wait_plugin_status("libchaos.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "copy_failed", "{entry}");
    let error = entry["error"].as_str().unwrap_or_default();
    for says in [
        "libchaos.so: cannot write its private copy into the copy folder",
        &private.display().to_string(),
        "No space left on device",
        "not of the plugin file",
        "host.copy_dir",
    ] {
        assert!(error.contains(says), "{says:?} missing from {error:?}");
    }
    assert!(
        host.private_copies().is_empty(),
        "a partial copy is left: {:?}",
        host.private_copies()
    );

    // Space is freed; a touch tries again, and the plugin loads and runs.
    mount.remount("size=512m");
    let touched = Command::new("touch")
        .arg(dir.plugins().join("libchaos.so"))
        .status()
        .expect("touch");
    assert!(touched.success());
    let entry = host.wait_plugin_status("libchaos.so", "loaded", STATE_TIMEOUT);
    assert_eq!(entry["generation"], 2, "{entry}");
    host.wait_state("chaos", "running", STATE_TIMEOUT);
}

#[test]
fn a_noexec_copy_dir_is_refused_at_start() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    let copies = dir.path().join("copies");
    let Some(_mount) = tmpfs_or_skip(
        "a_noexec_copy_dir_is_refused_at_start",
        &copies,
        "size=64m,noexec",
    ) else {
        return;
    };
    set_copy_dir(&mut dir, &copies);
    let mut args = dir.run_args();
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let finished = run_balut(args, Duration::from_secs(30));
    assert_eq!(finished.status.code(), Some(2), "{finished:?}");
    let says = format!(
        "copy folder {}: its file system is mounted noexec",
        copies.display()
    );
    assert!(
        finished.stderr.contains(&says),
        "{says:?} missing: {finished:?}"
    );
    assert!(finished.stderr.contains("host.copy_dir"), "{finished:?}");
}

#[test]
fn a_copy_dir_turned_noexec_later_keeps_dlopen_s_reason() {
    let mut dir = PluginDir::new();
    let copies = dir.path().join("copies");
    let Some(mount) = tmpfs_or_skip(
        "a_copy_dir_turned_noexec_later_keeps_dlopen_s_reason",
        &copies,
        "size=512m",
    ) else {
        return;
    };
    set_copy_dir(&mut dir, &copies);
    let host = Host::start(&dir);
    mount.remount("noexec");
    dir.add(Lib::Chaos);
    let entry = host.wait_plugin_status("libchaos.so", "error", STATE_TIMEOUT);
    assert_eq!(entry["error_kind"], "open_failed", "{entry}");
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("dlopen failed: ") && error.contains("failed to map segment"),
        "dlopen's reason is lost: {error:?}"
    );
}
