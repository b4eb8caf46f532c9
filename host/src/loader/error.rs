//! Why a plugin file could not be loaded: [`LoadError`], each naming the file, with a stable
//! kind for the API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ElfProblem, InterfaceVersion};

/// Why a plugin file could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Writing the private copy failed: a problem of the copy folder, not of the file.
    #[error(
        "{file}: cannot write its private copy into the copy folder {copy_dir}: {source} \
         (a problem of the copy folder, not of the plugin file{hint})",
        hint = copy_hint(source)
    )]
    Copy {
        file: PathBuf,
        copy_dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not an ELF file{}", if *empty { " (the file is empty)" } else { "" })]
    NotElf { file: PathBuf, empty: bool },
    #[error("{file}: truncated or corrupt ELF: {detail}")]
    Truncated { file: PathBuf, detail: String },
    #[error("{file}: wrong architecture: {detail}")]
    WrongArchitecture { file: PathBuf, detail: String },
    #[error("{file}: not a shared library but {what}")]
    NotSharedObject { file: PathBuf, what: String },
    #[error("{file}: missing export `{symbol}`: not a Balut plugin")]
    MissingExport { file: PathBuf, symbol: &'static str },
    #[error("{file}: bad plugin declaration: {detail}")]
    BadDeclaration { file: PathBuf, detail: String },
    #[error(
        "{file}: plugin `{plugin}` is built for plugin interface {plugin_interface}, \
         this host loads {}.0 to {host_interface}: {}",
        host_interface.major,
        mismatch_advice(*plugin_interface, *host_interface)
    )]
    InterfaceMismatch {
        file: PathBuf,
        plugin: String,
        plugin_interface: InterfaceVersion,
        host_interface: InterfaceVersion,
    },
    #[error("{file}: plugin `{plugin}` failed abi_stable's layout check: {detail}")]
    LayoutMismatch {
        file: PathBuf,
        plugin: String,
        detail: String,
    },
    #[error("{file}: plugin `{plugin}` could not be opened: {detail}")]
    Open {
        file: PathBuf,
        plugin: String,
        detail: String,
    },
    /// Its library initializers or finalizers hang, crash or exit (seen in the pre-flight).
    #[error("{file}: plugin `{plugin}` refused: {detail}")]
    Preflight {
        file: PathBuf,
        plugin: String,
        detail: String,
    },
    #[error("{file}: plugin `{plugin}` did not finish loading within {timeout:?}")]
    Timeout {
        file: PathBuf,
        plugin: String,
        timeout: Duration,
    },
}

impl LoadError {
    /// A stable, lowercase name for the kind of error, as the HTTP API reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Copy { .. } => "copy_failed",
            Self::NotElf { .. } => "not_elf",
            Self::Truncated { .. } => "truncated",
            Self::WrongArchitecture { .. } => "wrong_architecture",
            Self::NotSharedObject { .. } => "not_shared_object",
            Self::MissingExport { .. } => "missing_export",
            Self::BadDeclaration { .. } => "bad_declaration",
            Self::InterfaceMismatch { .. } => "interface_mismatch",
            Self::LayoutMismatch { .. } => "layout_mismatch",
            Self::Open { .. } => "open_failed",
            Self::Timeout { .. } => "load_timeout",
            Self::Preflight { .. } => "initializer_failed",
        }
    }

    /// The plugin's declared name, when the file got far enough to tell it.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Self::InterfaceMismatch { plugin, .. }
            | Self::LayoutMismatch { plugin, .. }
            | Self::Open { plugin, .. }
            | Self::Preflight { plugin, .. }
            | Self::Timeout { plugin, .. } => Some(plugin),
            _ => None,
        }
    }

    pub(crate) fn from_elf(file: &Path, bytes: &[u8], problem: ElfProblem) -> Self {
        let file = file.to_owned();
        match problem {
            ElfProblem::NotElf => Self::NotElf {
                file,
                empty: bytes.is_empty(),
            },
            ElfProblem::Truncated(detail) => Self::Truncated { file, detail },
            ElfProblem::WrongArchitecture(detail) => Self::WrongArchitecture { file, detail },
            ElfProblem::NotSharedObject(what) => Self::NotSharedObject { file, what },
            ElfProblem::MissingExport(symbol) => Self::MissingExport { file, symbol },
            ElfProblem::BadDeclaration(detail) => Self::BadDeclaration { file, detail },
        }
    }
}

/// What to do about a plugin built for an interface this host does not load.
fn mismatch_advice(plugin: InterfaceVersion, host: InterfaceVersion) -> String {
    let api = format!(
        "rebuild the plugin against balut-plugin-api {} (interface {host}, the one this host is built with)",
        balut_plugin_api::CRATE_VERSION
    );
    let newer = (plugin.major, plugin.minor) > (host.major, host.minor);
    if newer {
        format!(
            "the plugin is newer than this host: upgrade balut to a version that loads {plugin}, or {api}"
        )
    } else {
        api
    }
}

/// What to do about a copy that could not be written, for the usual causes.
fn copy_hint(source: &std::io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "; free space there or set `host.copy_dir` to another folder, then touch the file \
             to load it again"
        }
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => {
            "; set `host.copy_dir` to a folder balut can write"
        }
        Some(libc::ENOENT) => {
            "; the folder is gone (a temp-file cleaner?): restart balut, or set `host.copy_dir`"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_mismatch_says_what_to_build_against() {
        let v = |major, minor| InterfaceVersion { major, minor };
        let host = v(1, 3);
        let error = |plugin| LoadError::InterfaceMismatch {
            file: PathBuf::from("plugins/libx.so"),
            plugin: "x".into(),
            plugin_interface: plugin,
            host_interface: host,
        };
        let api = balut_plugin_api::CRATE_VERSION;
        let newer = error(v(2, 0)).to_string();
        assert_eq!(
            newer,
            format!(
                "plugins/libx.so: plugin `x` is built for plugin interface 2.0, this host loads \
                 1.0 to 1.3: the plugin is newer than this host: upgrade balut to a version that \
                 loads 2.0, or rebuild the plugin against balut-plugin-api {api} (interface 1.3, \
                 the one this host is built with)"
            )
        );
        assert!(error(v(1, 4)).to_string().contains("upgrade balut"));
        let older = error(v(0, 9)).to_string();
        assert!(!older.contains("upgrade balut"), "{older}");
        assert!(
            older.ends_with(&format!("rebuild the plugin against balut-plugin-api {api} (interface 1.3, the one this host is built with)")),
            "{older}"
        );
    }

    #[test]
    fn a_failed_copy_names_the_copy_folder_and_the_cause() {
        let error = LoadError::Copy {
            file: PathBuf::from("plugins/libchaos.so"),
            copy_dir: PathBuf::from("/var/lib/balut/balut-42-abcdef"),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(error.kind(), "copy_failed");
        assert_eq!(error.plugin(), None);
        let text = error.to_string();
        assert!(
            text.starts_with(
                "plugins/libchaos.so: cannot write its private copy into the copy folder \
                 /var/lib/balut/balut-42-abcdef: No space left on device"
            ),
            "{text}"
        );
        assert!(text.contains("not of the plugin file"), "{text}");
        assert!(
            text.contains("free space there or set `host.copy_dir`"),
            "{text}"
        );
        let other = LoadError::Copy {
            file: PathBuf::from("a.so"),
            copy_dir: PathBuf::from("/c"),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(
            other.to_string().ends_with("not of the plugin file)"),
            "{other}"
        );
    }
}
