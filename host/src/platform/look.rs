//! Looking at one name in the plugin folder: the symlink policy, the trust checks, the size
//! limit, and reading the content once. Facts only; no judgement of what they mean.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Content, Observation, Problem, Stamp};
use crate::loader::content_hash;
use crate::trust;

/// What a look checks, from the settings.
#[derive(Debug, Clone)]
pub struct LookRules {
    /// The plugin folder, absolute and canonical.
    pub plugin_dir: PathBuf,
    pub strict_modes: bool,
    pub max_bytes: u64,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        }
    }
}

/// Whether a name in the folder is a plugin candidate: `*.so`, not a dotfile. Everything
/// else (READMEs, editor and temp files such as `x.so.tmp` or `x.so~`) is ignored quietly.
pub fn is_candidate(name: &str) -> bool {
    name.ends_with(".so") && !name.starts_with('.')
}

/// The candidate names in `dir`, sorted.
pub fn list_candidates(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_candidate(&entry.file_name().to_string_lossy()) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn unusable(problem: Problem, message: String, key: String) -> Observation {
    Observation::Unusable {
        problem,
        message,
        key,
    }
}

fn io_problem(path: &Path, e: &std::io::Error) -> Observation {
    unusable(
        Problem::Io,
        format!("{}: cannot read: {e}", path.display()),
        format!("io:{e}"),
    )
}

/// Looks at `path`: see [`Observation`].
pub fn look(path: &Path, rules: &LookRules) -> Observation {
    let link = match std::fs::symlink_metadata(path) {
        Ok(link) => link,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Observation::Gone,
        Err(e) => return io_problem(path, &e),
    };
    if link.is_dir() {
        let message = format!("{}: is a folder, not a plugin library", path.display());
        return unusable(Problem::NotAFile, message, "folder".into());
    }
    // The file the library's bytes come from: the symlink's target, inside the folder.
    let mut real = path.to_owned();
    if link.file_type().is_symlink() {
        match resolve_symlink(path, &rules.plugin_dir) {
            Ok(target) => real = target,
            Err((problem, message)) => return unusable(problem, message.clone(), message),
        }
    }
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return io_problem(path, &e),
    };
    if !meta.is_file() {
        let message = format!("{}: not a regular file", path.display());
        return unusable(Problem::NotAFile, message, "special".into());
    }
    if rules.strict_modes {
        let trusted = trust::check_folders_to(&rules.plugin_dir, &real)
            .and_then(|()| trust::check(path, &meta));
        if let Err(e) = trusted {
            let message = e.to_string();
            return unusable(Problem::Untrusted, message.clone(), message);
        }
    }
    let stamp = Stamp::of(&meta);
    let bytes = match read_at_most(path, meta.len(), rules.max_bytes) {
        Ok(bytes) => bytes,
        Err(ReadError::TooLarge(message)) => {
            let key = format!("too_large:{}", meta.len());
            return unusable(Problem::TooLarge, message, key);
        }
        Err(ReadError::Io(message)) => {
            return unusable(Problem::Io, message.clone(), format!("io:{message}"));
        }
    };
    let after = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
    if after != Some(stamp) {
        return Observation::Changing;
    }
    let hash = content_hash(&bytes);
    Observation::Content(Content {
        bytes: Arc::new(bytes),
        hash,
        stamp,
    })
}

/// A symlink is followed only when its target is inside the plugin folder. A dangling or
/// looping link is an `io` problem; one leading outside is `untrusted`.
fn resolve_symlink(path: &Path, plugin_dir: &Path) -> Result<PathBuf, (Problem, String)> {
    let target = std::fs::canonicalize(path).map_err(|e| {
        let message = format!("{}: cannot resolve the symlink: {e}", path.display());
        (Problem::Io, message)
    })?;
    if target.starts_with(plugin_dir) {
        Ok(target)
    } else {
        Err((
            Problem::Untrusted,
            format!(
                "{}: symlink target {} is outside the plugin folder {}",
                path.display(),
                target.display(),
                plugin_dir.display()
            ),
        ))
    }
}

/// Why [`read_at_most`] read nothing: the message names the file.
enum ReadError {
    Io(String),
    TooLarge(String),
}

/// The content of `path` (whose metadata said `len` bytes), unless it is more than `max`
/// bytes: a huge file (say a sparse file of terabytes) is refused without being read, and
/// one that grows while being read stops being read past `max`.
fn read_at_most(path: &Path, len: u64, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let too_large = |len: String| {
        ReadError::TooLarge(format!(
            "{}: too large: {len} bytes, plugin files may be at most {max} bytes \
             ({} MiB, host.max_plugin_bytes)",
            path.display(),
            max / (1024 * 1024)
        ))
    };
    if len > max {
        return Err(too_large(len.to_string()));
    }
    let io = |e: std::io::Error| ReadError::Io(format!("{}: cannot read: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(format!("more than {max}")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_so_files_but_not_dotfiles_or_temp_files() {
        assert!(is_candidate("libecho.so"));
        assert!(!is_candidate(".libecho.so"));
        assert!(!is_candidate("libecho.so.tmp"));
        assert!(!is_candidate("libecho.so~"));
        assert!(!is_candidate("README.txt"));
        assert!(!is_candidate(".#libecho.so"));
    }

    #[test]
    fn files_above_the_limit_are_not_read() {
        let dir = tempfile::tempdir().expect("a temp folder");
        let path = dir.path().join("big.so");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(8 << 30).expect("a sparse 8 GiB file");
        let refused = |len, max| match read_at_most(&path, len, max) {
            Err(ReadError::TooLarge(message)) => message,
            Err(ReadError::Io(message)) => panic!("io error: {message}"),
            Ok(bytes) => panic!("read {} bytes", bytes.len()),
        };
        let message = refused(8 << 30, 1024 * 1024);
        assert!(
            message.contains("big.so: too large: 8589934592 bytes"),
            "{message}"
        );
        assert!(
            message.contains("at most 1048576 bytes (1 MiB"),
            "{message}"
        );
        // A file that grew since its size was taken is cut off at the limit.
        let message = refused(10, 4096);
        assert!(message.contains("more than 4096 bytes"), "{message}");
        std::fs::write(&path, b"small").expect("write");
        assert!(matches!(read_at_most(&path, 5, 5), Ok(b) if b == b"small"));
    }

    #[test]
    fn a_look_reports_gone_folders_and_content() {
        let dir = tempfile::tempdir().expect("a temp folder");
        let rules = LookRules {
            plugin_dir: dir.path().to_owned(),
            strict_modes: false,
            max_bytes: 1 << 20,
        };
        assert!(matches!(
            look(&dir.path().join("a.so"), &rules),
            Observation::Gone
        ));
        std::fs::create_dir(dir.path().join("d.so")).expect("mkdir");
        assert!(matches!(
            look(&dir.path().join("d.so"), &rules),
            Observation::Unusable {
                problem: Problem::NotAFile,
                ..
            }
        ));
        std::fs::write(dir.path().join("b.so"), b"bytes").expect("write");
        match look(&dir.path().join("b.so"), &rules) {
            Observation::Content(content) => {
                assert_eq!(content.bytes.as_slice(), b"bytes");
                assert_eq!(content.hash, content_hash(b"bytes"));
            }
            other => panic!("{other:?}"),
        }
    }
}
