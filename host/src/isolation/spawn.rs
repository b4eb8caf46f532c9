//! Starting an isolated container's process: `balut __isolate NAME`, with its end of the
//! socket pair as file descriptor 3, killed when the host dies, under its memory limit.
//!
//! Low-level process code: the `unsafe` here runs between `fork` and `exec`.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process:
//! so every child is forked by one thread that lives as long as the host (`balut-spawn`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The descriptor the child finds its socket at.
pub const CHILD_FD: i32 = 3;
/// Set in the child's environment (the container's name): a library may tell it runs
/// isolated.
pub const CHILD_ENV: &str = "BALUT_ISOLATED";

type Job = Box<dyn FnOnce() + Send>;

/// Starts `exe __isolate name` with `socket` as its descriptor 3, stdout shared with the
/// host and stderr piped, `memory_max_bytes` as its `RLIMIT_AS`.
pub fn spawn(
    exe: &Path,
    name: &str,
    socket: OwnedFd,
    memory_max_bytes: Option<u64>,
) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("__isolate")
        .arg(name)
        .env(CHILD_ENV, name)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let fd = socket.as_raw_fd();
    let parent = std::process::id();
    let limit = memory_max_bytes.map(|bytes| libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    });
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (dup2, fcntl, setpgid, prctl, getppid, setrlimit) on values
    // computed before the fork; it allocates nothing.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            if fd == CHILD_FD {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CHILD_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // A process group of its own: a terminal's Ctrl-C is for the host alone.
            if libc::setpgid(0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The host may have died before the line above: then nobody would kill us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("the host ended"));
            }
            if let Some(limit) = &limit {
                if libc::setrlimit(libc::RLIMIT_AS, limit) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _runtime = handle.enter();
        let _ = tx.send(command.spawn());
        // The host's copy of the child's end closes here, once the child has its own.
        drop(socket);
    });
    spawner()?
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .map_err(|_| std::io::Error::other("the spawning thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawning thread dropped the request"))?
}

/// The thread that forks every child, started on first use.
fn spawner() -> std::io::Result<&'static Mutex<mpsc::Sender<Job>>> {
    static SPAWNER: OnceLock<Result<Mutex<mpsc::Sender<Job>>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("balut-spawn".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .map(|_| Mutex::new(tx))
                .map_err(|e| format!("starting the thread that spawns containers' processes: {e}"))
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(e.clone()))
}
