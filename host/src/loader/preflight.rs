//! The pre-flight of new content: before a library is opened in the host, a short-lived
//! child process (`balut __preflight COPY`) opens and closes it, so its initializers
//! (`.init_array`, static constructors) and finalizers (`.fini_array`) run there first. They
//! run under the C library's loader lock: one that hangs or crashes in the host would block
//! every later load and thread start, or end the host. A hang or crash in the child refuses
//! the file with that reason; the host never opens it. A content that passed is not tried
//! again (the same bytes behave the same).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// The child's exit code when `dlopen` itself failed (its message is on stderr).
const OPEN_FAILED: u8 = 4;
/// The child's exit code when `dlclose` failed.
const CLOSE_FAILED: u8 = 5;
/// How much of the child's stderr is kept for the error message.
const STDERR_KEPT: u64 = 4096;
/// Set in the child's environment: a library may tell it runs in the pre-flight.
pub const CHILD_ENV: &str = "BALUT_PREFLIGHT";

/// Why a pre-flight refused a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `dlopen` failed (a missing dependency, a bad relocation...).
    Open(String),
    /// Its initializers or finalizers hang, crash or exit, or the child could not run.
    Trap(String),
}

/// Set in the child's environment to the host's pid: the child asks to be killed when
/// the host dies, and ends at once if it already has.
const PARENT_ENV: &str = "BALUT_PREFLIGHT_PARENT";

/// The child's exit code when the host was gone before the library was opened.
const ORPHANED: u8 = 6;

/// The child's side: opens and closes `library`, then exits.
pub fn child(library: &Path) -> ExitCode {
    // Asked here rather than between fork and exec, so the host starts the child with
    // `posix_spawn` (no copy of its page tables, which a host of a thousand threads makes
    // slow); a host that died before this line is seen as a new parent.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let parent = std::env::var(PARENT_ENV).ok();
    if parent.is_some_and(|p| p != nix::unistd::getppid().to_string()) {
        return ExitCode::from(ORPHANED);
    }
    // SAFETY: this process exists only to run the library's initializers and finalizers
    // apart from the host: whatever they do ends here. The file is the host's private copy,
    // already checked to be a whole ELF shared object for this machine.
    match unsafe { libloading::Library::new(library) } {
        Ok(handle) => match handle.close() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}", super::with_causes(&e));
                ExitCode::from(CLOSE_FAILED)
            }
        },
        Err(e) => {
            eprintln!("{}", super::with_causes(&e));
            ExitCode::from(OPEN_FAILED)
        }
    }
}

/// Runs the pre-flight of `copy` with the host's own executable `exe`, within `timeout`.
pub async fn run(exe: &Path, copy: &Path, timeout: Duration) -> Result<(), Failure> {
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("__preflight")
        .arg(copy)
        .env(CHILD_ENV, "1")
        .env(PARENT_ENV, std::process::id().to_string())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        Failure::Trap(format!(
            "cannot start the pre-flight child {}: {e}",
            exe.display()
        ))
    })?;
    let mut stderr = child.stderr.take();
    let read_stderr = async move {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.take(STDERR_KEPT).read_to_string(&mut text).await;
        }
        text
    };
    let waited = tokio::time::timeout(timeout, async {
        let (status, text) = tokio::join!(child.wait(), read_stderr);
        (status, text)
    })
    .await;
    let (status, text) = match waited {
        Ok((Ok(status), text)) => (status, text),
        Ok((Err(e), _)) => {
            return Err(Failure::Trap(format!(
                "waiting for the pre-flight child: {e}"
            )));
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(Failure::Trap(format!(
                "its initializers or finalizers hang: the pre-flight child did not finish within {} ms and was killed",
                timeout.as_millis()
            )));
        }
    };
    let said = text.trim();
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {}", said.lines().last().unwrap_or(said))
    };
    if status.success() {
        return Ok(());
    }
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned());
        return Err(Failure::Trap(format!(
            "its initializers or finalizers crash: the pre-flight child was killed by {name}{said}"
        )));
    }
    match status.code() {
        Some(code) if code == i32::from(OPEN_FAILED) => Err(Failure::Open(text.trim().to_owned())),
        Some(code) => Err(Failure::Trap(format!(
            "its initializers or finalizers exit: the pre-flight child exited with code {code}{said}"
        ))),
        None => Err(Failure::Trap(format!(
            "the pre-flight child ended with {status}"
        ))),
    }
}

/// The executable that runs pre-flights: this very binary.
///
/// `/proc/self/exe` where there is one: it names this process's own image even after the
/// file was deleted or replaced (an upgrade that renamed a new binary into place), so a
/// child always runs the very code, and protocol, of the host that spawns it.
pub fn own_executable() -> std::io::Result<PathBuf> {
    let own = PathBuf::from("/proc/self/exe");
    if own.exists() {
        return Ok(own);
    }
    std::env::current_exe()
}
