//! Who may put code into this process: like sshd's StrictModes, a plugin folder or file
//! that a user other than the host's own (or root) can write is refused, since anyone who
//! can write it can run code as the host.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Why a path is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{path} is writable by {who} (mode {mode:o}); refusing to load code from it \
         (chmod go-w, or run with --no-strict-modes)"
    )]
    Writable {
        path: String,
        mode: u32,
        who: &'static str,
    },
    #[error(
        "{path} is owned by uid {owner}, not by this host's user (uid {host}) or root; refusing \
         to load code from it (run with --no-strict-modes to allow)"
    )]
    ForeignOwner { path: String, owner: u32, host: u32 },
}

/// Checks the ownership and mode of `path` (following symlinks: `meta` should come from
/// `std::fs::metadata`).
pub fn check(path: &Path, meta: &std::fs::Metadata) -> Result<(), TrustError> {
    let mode = meta.permissions().mode() & 0o7777;
    let path_text = path.display().to_string();
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("everyone"),
        (true, false) => Some("its group"),
        (false, false) => None,
    };
    if let Some(who) = who {
        return Err(TrustError::Writable {
            path: path_text,
            mode,
            who,
        });
    }
    let host = nix::unistd::geteuid().as_raw();
    let owner = meta.uid();
    if owner != host && owner != 0 {
        return Err(TrustError::ForeignOwner {
            path: path_text,
            owner,
            host,
        });
    }
    Ok(())
}

/// Checks the plugin folder itself.
pub fn check_folder(dir: &Path) -> Result<(), TrustError> {
    match std::fs::metadata(dir) {
        Ok(meta) => check(dir, &meta),
        // A missing folder is reported elsewhere, with its own message.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn group_and_world_writable_are_refused_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.so");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check(&file, &fs::metadata(&file).unwrap()), Ok(()));

        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
        let err = check(&file, &fs::metadata(&file).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("writable by its group (mode 664)"),
            "{err}"
        );

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_folder(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("writable by everyone (mode 777)"),
            "{err}"
        );
    }
}
