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

/// Checks `folder` and every folder between it and `file`, a path inside it: whoever can
/// write one of them can put another file in `file`'s place. Run before each load, so a
/// plugin folder made writable after start-up, or a symlink to a file in a writable
/// sub-folder, is refused too.
pub fn check_folders_to(folder: &Path, file: &Path) -> Result<(), TrustError> {
    let mut chain: Vec<&Path> = file
        .ancestors()
        .skip(1)
        .take_while(|dir| dir.starts_with(folder))
        .collect();
    chain.reverse();
    for dir in chain {
        // A folder that cannot be read is reported by the read of the file itself.
        if let Ok(meta) = std::fs::metadata(dir) {
            check(dir, &meta)?;
        }
    }
    Ok(())
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

    #[test]
    fn every_folder_from_the_plugin_folder_down_to_the_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("plugins");
        let sub = folder.join("versions");
        fs::create_dir_all(&sub).unwrap();
        let file = sub.join("x.so");
        fs::write(&file, b"x").unwrap();
        for path in [&folder, &sub] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        // What lies above the plugin folder is not checked (here made world-writable; it
        // is often a sticky, world-writable /tmp).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(check_folders_to(&folder, &file), Ok(()));

        fs::set_permissions(&sub, fs::Permissions::from_mode(0o775)).unwrap();
        let err = check_folders_to(&folder, &file).unwrap_err().to_string();
        assert!(err.contains("versions is writable by its group"), "{err}");

        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o757)).unwrap();
        let err = check_folders_to(&folder, &folder.join("y.so"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugins is writable by everyone"), "{err}");
    }
}
