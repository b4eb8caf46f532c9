//! The API's Unix socket file: bound with mode 0600 only where no live host answers (a
//! stale socket, whose listener is gone, is replaced), and removed at exit only if the
//! path still names the socket this host made: same device, inode and change time. (While
//! the listener is open it holds its inode, so a file made at the path after a removal
//! gets another number; the change time guards the moment after it closed.)

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{info, warn};

/// The socket file this host bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: Identity,
}

/// What tells one file from another made later at the same path.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// What is at the path now.
enum Found {
    Nothing,
    /// A socket nobody listens on (connecting is refused).
    Stale,
}

/// Refuses a path where a live host (or anything) answers, or that is not a socket.
pub fn refuse_if_taken(path: &Path) -> anyhow::Result<()> {
    look(path).map(|_| ())
}

fn look(path: &Path) -> anyhow::Result<Found> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("looking at the unix socket path {}", path.display()));
        }
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    match answers(path) {
        Ok(false) => Ok(Found::Stale),
        Ok(true) => bail!(
            "the unix socket {} is in use: another process (another balut host?) answers on it; \
             stop it or choose another --unix-socket path",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot tell whether the unix socket {} is in use",
                path.display()
            )
        }),
    }
}

/// Whether something listens on the socket at `path`: a connection is accepted, or the
/// listener's queue is full (a non-blocking connect never waits); refused means stale.
fn answers(path: &Path) -> io::Result<bool> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        Err(e) => Err(e),
    }
}

impl SocketFile {
    /// Binds the socket at `path` with mode 0600, replacing only a stale socket.
    pub fn bind(path: &Path) -> anyhow::Result<(tokio::net::UnixListener, SocketFile)> {
        if let Found::Stale = look(path)? {
            info!(path = %path.display(), "replacing a stale unix socket (nothing answers on it)");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("removing the stale socket {}", path.display()));
                }
                _ => {}
            }
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("cannot listen on the unix socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("looking at the unix socket {}", path.display()))?;
        let file = SocketFile {
            path: path.to_owned(),
            identity: Identity::of(&meta),
        };
        Ok((listener, file))
    }

    /// The path bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if the path still names the socket this host bound; a
    /// socket another process put there since is left alone.
    pub fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| Identity::of(&meta) == self.identity);
        if !ours {
            warn!(
                path = %self.path.display(),
                "not removing the unix socket: the path no longer names the socket this host made"
            );
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "cannot remove the unix socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_refused_a_stale_one_replaced_and_only_ours_removed() {
        let dir = tempfile::tempdir().expect("a temp folder");
        let path = dir.path().join("api.sock");
        let (listener, file) = SocketFile::bind(&path).expect("a free path");
        let err = SocketFile::bind(&path)
            .expect_err("a live socket")
            .to_string();
        assert!(err.contains("in use") && err.contains("api.sock"), "{err}");
        assert!(refuse_if_taken(&path).is_err());
        // Someone else puts their socket at the path: ours leaves it in place.
        std::fs::remove_file(&path).expect("remove");
        let theirs = std::os::unix::net::UnixListener::bind(&path).expect("bind theirs");
        file.remove();
        assert!(path.exists());
        drop(listener);
        // Their listener gone, the socket is stale: replaced, and removed as ours.
        drop(theirs);
        let (_listener, second) = SocketFile::bind(&path).expect("a stale socket");
        second.remove();
        assert!(!path.exists());
        // Not a socket: refused.
        std::fs::write(&path, "x").expect("write");
        let err = refuse_if_taken(&path).expect_err("a file").to_string();
        assert!(err.contains("not a socket"), "{err}");
    }
}
