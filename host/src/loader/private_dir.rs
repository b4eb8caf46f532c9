//! The private copy folder: where the copies the host maps are written, how it is named and
//! held, the start-up check that copies there can be mapped executable, and the removal of
//! the folders of hosts that died without removing theirs.
//!
//! The folder is `<copy_dir or $TMPDIR>/balut-<pid>-XXXXXX` (mode 0700), and its host holds
//! an exclusive `flock` on it for its whole life. A host that crashes (a segfault in plugin
//! code, SIGKILL, an OOM kill) leaves it behind; the next start removes it when nothing shows
//! its host alive: the lock is free (the kernel drops it with the process, whatever pid
//! namespace the host ran in) and no process has that pid (or it is the starting host's own
//! pid, a previous incarnation of a host that always runs as the same pid). A folder is
//! kept if either says it may be alive, if another user owns it, if it is a symlink or does
//! not match the pattern (older hosts' `balut-XXXXXX` folders are not touched).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::statvfs::{FsFlags, statvfs};
use tracing::{debug, info, warn};

/// Why the copy folder cannot be used; found at start, before anything is loaded.
#[derive(Debug, thiserror::Error)]
pub enum CopyDirError {
    #[error(
        "copy folder {}: its file system is mounted noexec, so the private copies of plugins \
         written there could not be mapped executable; set `host.copy_dir` (or TMPDIR) to a \
         folder on a file system that allows it",
        dir.display()
    )]
    NoExec { dir: PathBuf },
    #[error("copy folder {}: cannot look at it: {source}", dir.display())]
    Unusable { dir: PathBuf, source: Errno },
}

/// The folder copies go under: `host.copy_dir`, or the system's temp folder.
pub fn copy_parent(copy_dir: Option<&Path>) -> PathBuf {
    copy_dir.map_or_else(std::env::temp_dir, Path::to_owned)
}

/// Checks at start that private copies under `copy_dir` (or the temp folder) could be
/// mapped executable: its file system is not mounted `noexec`.
pub fn check_copy_dir(copy_dir: Option<&Path>) -> Result<(), CopyDirError> {
    let dir = copy_parent(copy_dir);
    let stat = statvfs(&dir).map_err(|source| CopyDirError::Unusable {
        dir: dir.clone(),
        source,
    })?;
    if stat.flags().contains(FsFlags::ST_NOEXEC) {
        return Err(CopyDirError::NoExec { dir });
    }
    Ok(())
}

/// This host's private copy folder, locked for as long as it lives and removed when dropped.
pub struct PrivateDir {
    dir: tempfile::TempDir,
    /// Held, never read: the lock tells later hosts that this folder's host is alive.
    _lock: Option<Flock<File>>,
}

impl PrivateDir {
    /// Creates `balut-<pid>-XXXXXX` (mode 0700) under `parent` or the temp folder, and
    /// locks it.
    pub fn create(parent: Option<&Path>) -> std::io::Result<Self> {
        let prefix = format!("balut-{}-", std::process::id());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent)?,
            None => builder.tempdir()?,
        };
        let lock = match File::open(dir.path()) {
            Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => Some(lock),
                Err((_, e)) => {
                    debug!(folder = %dir.path().display(), error = %e, "cannot lock the private copy folder; its pid alone will tell later hosts it is in use");
                    None
                }
            },
            Err(e) => {
                debug!(folder = %dir.path().display(), error = %e, "cannot open the private copy folder to lock it");
                None
            }
        };
        Ok(Self { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes `bytes` to the new file `copy`. On failure (a full disk, a quota) the partial file
/// is removed, so it neither holds the space nor stands in the way of a later try (whose
/// generation, hence name, differs anyway).
pub fn write_copy(copy: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // `create_new`: a fresh inode under a name never used before, never a link to the
    // watched file, so glibc cannot hand back an old mapping of it.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(copy)?;
    // No fsync: the copy only has to outlive this process, and dlopen reads it through
    // the page cache.
    if let Err(e) = out.write_all(bytes) {
        drop(out);
        let _ = std::fs::remove_file(copy);
        return Err(e);
    }
    Ok(())
}

/// Removes the private copy folders under `copy_dir` (or the temp folder) that hosts now gone
/// left behind, logging each; returns them.
pub fn remove_stale(copy_dir: Option<&Path>) -> Vec<PathBuf> {
    let parent = copy_parent(copy_dir);
    let entries = match std::fs::read_dir(&parent) {
        Ok(entries) => entries,
        Err(e) => {
            debug!(folder = %parent.display(), error = %e, "cannot list the copy folder for leftovers");
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        let path = entry.path();
        match judge(&path, pid) {
            Ok(Verdict::Gone(lock)) => {
                // Removed while holding its lock; std's `remove_dir_all` never follows a
                // symlink inside.
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        info!(folder = %path.display(), pid, "removed a private copy folder left by a host that is gone");
                        removed.push(path);
                    }
                    Err(e) => {
                        warn!(folder = %path.display(), pid, error = %e, "cannot remove a private copy folder left by a host that is gone")
                    }
                }
                drop(lock);
            }
            Ok(Verdict::Keep(why)) => {
                debug!(folder = %path.display(), pid, why, "keeping a private copy folder");
            }
            Err(e) => {
                debug!(folder = %path.display(), pid, error = %e, "keeping a private copy folder that cannot be inspected");
            }
        }
    }
    removed
}

/// What a leftover-looking folder is.
enum Verdict {
    /// Its host is gone: remove it (under its lock, if locks work there).
    Gone(Option<Flock<File>>),
    Keep(&'static str),
}

fn judge(path: &Path, pid: i32) -> std::io::Result<Verdict> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_dir() {
        return Ok(Verdict::Keep("not a folder (a symlink is never followed)"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Ok(Verdict::Keep("owned by another user"));
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    let opened = dir.metadata()?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Ok(Verdict::Keep("replaced while being looked at"));
    }
    let lock = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Some(lock),
        Err((_, Errno::EWOULDBLOCK)) => return Ok(Verdict::Keep("its host holds its lock")),
        // Locks do not work there: the pid alone decides.
        Err(_) => None,
    };
    let own = u32::try_from(pid).is_ok_and(|pid| pid == std::process::id());
    if !own && process_exists(pid) {
        return Ok(Verdict::Keep("a process with its host's pid exists"));
    }
    Ok(Verdict::Gone(lock))
}

/// Whether a process `pid` exists (`kill(pid, 0)`; one of another user's counts).
fn process_exists(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true,
    }
}

/// The owner pid of a private copy folder named `balut-<pid>-<random>`, or `None` for any
/// other name.
fn owner_pid(name: &str) -> Option<i32> {
    let (pid, random) = name.strip_prefix("balut-")?.split_once('-')?;
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let random_ok =
        (1..=32).contains(&random.len()) && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if !digits || !random_ok {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_copy_folder_names_have_an_owner() {
        assert_eq!(owner_pid("balut-1234-aB3xYz"), Some(1234));
        assert_eq!(owner_pid("balut-1-q"), Some(1));
        assert_eq!(owner_pid("balut-aB3xYz"), None, "an older host's folder");
        assert_eq!(owner_pid("balut-0-aB3xYz"), None);
        assert_eq!(owner_pid("balut--aB3xYz"), None);
        assert_eq!(owner_pid("balut-12-"), None);
        assert_eq!(owner_pid("balut-12-a/b"), None);
        assert_eq!(owner_pid("balut-12-a.b"), None);
        assert_eq!(owner_pid("balut-99999999999-abc"), None);
        assert_eq!(owner_pid("balut-e2e-abc"), None);
        assert_eq!(owner_pid("other-12-abc"), None);
    }

    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn folders_of_gone_hosts_are_removed_and_the_others_kept() {
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let dir = parent.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("libx-g1-abc.so"), b"x").unwrap();
            dir
        };
        let dead = make(&format!("balut-{}-dead01", dead_pid()));
        let own = make(&format!("balut-{}-own001", std::process::id()));
        let parent_pid = std::os::unix::process::parent_id();
        let other_alive = make(&format!("balut-{parent_pid}-live02"));
        let legacy = make("balut-old001");
        let target = make("target");
        let link = parent.path().join(format!("balut-{}-link01", dead_pid()));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // A live host's folder: locked by it.
        let held = PrivateDir::create(Some(parent.path())).unwrap();

        let mut removed = remove_stale(Some(parent.path()));
        removed.sort();
        // The starting host's own pid with a free lock: a previous incarnation, gone.
        let mut expected = vec![dead.clone(), own.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(!dead.exists() && !own.exists());
        for kept in [
            &other_alive,
            &legacy,
            &target,
            &link,
            &held.path().to_owned(),
        ] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(target.join("libx-g1-abc.so").exists());
    }

    #[test]
    fn a_copy_never_reuses_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("libx-g1-abc.so");
        write_copy(&copy, b"bytes").unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"bytes");
        // The same name again: refused, and the first copy is untouched.
        let again = write_copy(&copy, b"other").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&copy).unwrap(), b"bytes");
    }

    #[test]
    fn a_noexec_copy_folder_is_refused_by_name() {
        let error = CopyDirError::NoExec {
            dir: PathBuf::from("/mnt/copies"),
        };
        let text = error.to_string();
        assert!(text.starts_with("copy folder /mnt/copies: "), "{text}");
        assert!(
            text.contains("noexec") && text.contains("host.copy_dir"),
            "{text}"
        );
        let missing = check_copy_dir(Some(Path::new("/nonexistent/balut-copies"))).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("copy folder /nonexistent/balut-copies: cannot look at it: "),
            "{missing}"
        );
        check_copy_dir(Some(std::env::temp_dir().as_path())).unwrap();
    }
}
