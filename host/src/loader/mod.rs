//! Loading and unloading plugin libraries. All of the host's `unsafe` lives in this module,
//! but for the crash and exit hooks (`crash/`).
//!
//! A load ([`Loader::load_bytes`], or [`Loader::load_hashed`] with the content hash already
//! known) takes the plugin file's bytes, read once by the caller, checks them (the ELF
//! checks of `loader/elf.rs`), gates on the declared interface version, writes them to a
//! private copy with a unique name per generation (in the host's private copy folder,
//! `private_dir.rs`), and opens the copy on a thread that is
//! joined before the load returns. Every
//! later call into the library runs on a [`Worker`] thread the host owns for one container,
//! except a config check ([`check_config`], interface 1.2), which runs on a short-lived
//! thread of its own.
//! [`Library::unload`] closes the library once nothing holds it, deletes the copy and
//! verifies with `/proc/self/maps` that the copy is really gone.
//!
//! Facts behind this design: docs/ARCHITECTURE.md (its opening list).

mod check;
pub(crate) mod elf;
mod error;
mod layout;
mod maps;
pub mod preflight;
mod private_dir;
mod version;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use abi_stable::library::AbiHeaderRef;
use balut_plugin_api::__private::PluginModRef;
use sha2::{Digest, Sha256};

pub use check::{ConfigCheck, check_config};
pub use elf::ElfProblem;
pub use error::LoadError;
use layout::check_layout;
use private_dir::PrivateDir;
pub use private_dir::{CopyDirError, check_copy_dir, remove_stale};
pub use version::{InterfaceVersion, PluginInfo, version_text};
pub use worker::{CallError, HealthReport, Worker, calls};

/// Outcome of [`Library::unload`].
#[derive(Debug, Clone)]
pub struct UnloadReport {
    /// Whether the private copy is still mapped into the process after closing.
    pub still_mapped: bool,
    /// Problems closing the library or deleting the copy.
    pub errors: Vec<String>,
}

/// What is known of one loaded generation: plain data, no handle into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryFacts {
    pub info: PluginInfo,
    /// The plugin file in the watched folder.
    pub file: PathBuf,
    /// The private copy that is actually mapped.
    pub copy: PathBuf,
    pub generation: u64,
    /// Hex SHA-256 of the file's content.
    pub sha256: String,
    pub loaded_at: SystemTime,
    /// Containers an instance requires unless its config says otherwise (interface 1.1).
    pub default_requires: Vec<String>,
}

impl LibraryFacts {
    /// The first 12 hex digits of the content hash.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12.min(self.sha256.len())]
    }
}

/// One loaded generation of a plugin file.
///
/// Dropping a `Library` without [`Library::unload`] never closes it: code of a library whose
/// unload was not verified safe stays mapped rather than risking a crash.
pub struct Library {
    pub facts: LibraryFacts,
    module: PluginModRef,
    handle: Mutex<Option<libloading::Library>>,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("plugin", &self.facts.info.name)
            .field("file", &self.facts.file)
            .field("generation", &self.facts.generation)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// The plugin's root module. Only valid while the library is loaded, which holding an
    /// `Arc<Library>` guarantees.
    pub(crate) fn module(&self) -> PluginModRef {
        self.module
    }

    /// Closes the library, deletes its private copy and checks the process's mappings.
    /// Call it only when no worker thread of this generation is alive: holding the last
    /// `Arc` proves it, since every worker thread holds one.
    pub fn unload(self: Arc<Self>) -> Result<UnloadReport, Arc<Self>> {
        let this = Arc::try_unwrap(self)?;
        let mut errors = Vec::new();
        let handle = this
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if let Err(e) = handle.close() {
                errors.push(format!("dlclose: {e}"));
            }
        }
        let copy = &this.facts.copy;
        if let Err(e) = std::fs::remove_file(copy) {
            errors.push(format!("deleting private copy {}: {e}", copy.display()));
        }
        let still_mapped = maps::is_mapped(copy).unwrap_or_else(|e| {
            errors.push(format!("reading /proc/self/maps: {e}"));
            true
        });
        Ok(UnloadReport {
            still_mapped,
            errors,
        })
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        let handle = self
            .handle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // Not unloaded through `unload`: keep it mapped for good (see the type's docs).
            std::mem::forget(handle);
        }
    }
}

/// Opens plugin files as new generations from private copies.
pub struct Loader {
    private_dir: PrivateDir,
    generations: HashMap<PathBuf, u64>,
    load_timeout: Duration,
    /// The executable that runs pre-flights (`preflight.rs`), when they are on.
    preflight: Option<PathBuf>,
    /// Contents (hashes) whose pre-flight passed.
    cleared: HashSet<String>,
}

impl Loader {
    /// Creates the private folder (`balut-<pid>-XXXXXX`, mode 0700, locked while this
    /// loader lives) for copies under `parent` or the system's temporary folder.
    pub fn new(parent: Option<&Path>, load_timeout: Duration) -> std::io::Result<Self> {
        Ok(Self {
            private_dir: PrivateDir::create(parent)?,
            generations: HashMap::new(),
            load_timeout,
            preflight: None,
            cleared: HashSet::new(),
        })
    }

    /// Runs a pre-flight of each new content with `exe` (the `balut` binary) before
    /// opening it in this process.
    pub fn with_preflight(mut self, exe: PathBuf) -> Self {
        self.preflight = Some(exe);
        self
    }

    /// The folder holding private copies.
    pub fn private_dir(&self) -> &Path {
        self.private_dir.path()
    }

    /// Checks `bytes` (the content of `file`), copies and opens them as a new generation.
    /// Checking and loading the same bytes leaves no window for the file to change between.
    pub async fn load_bytes(
        &mut self,
        file: &Path,
        bytes: &[u8],
    ) -> Result<Arc<Library>, LoadError> {
        self.load_hashed(file, bytes, content_hash(bytes)).await
    }

    /// [`Self::load_bytes`] for a caller that already has `sha256`, the
    /// [`content_hash`] of `bytes` (the supervisor hashes every file it looks at to tell
    /// new content from a `touch`; hashing a 7 MB plugin again took milliseconds per load).
    pub async fn load_hashed(
        &mut self,
        file: &Path,
        bytes: &[u8],
        sha256: String,
    ) -> Result<Arc<Library>, LoadError> {
        debug_assert_eq!(sha256, content_hash(bytes), "the hash of other bytes");
        let decl = elf::inspect(bytes).map_err(|p| LoadError::from_elf(file, bytes, p))?;
        let info = PluginInfo::from(&decl);
        if !info.interface.loadable_by_host() {
            return Err(LoadError::InterfaceMismatch {
                file: file.to_owned(),
                plugin: info.name,
                plugin_interface: info.interface,
                host_interface: InterfaceVersion::HOST,
            });
        }
        let generation = {
            let counter = self.generations.entry(file.to_owned()).or_insert(0);
            *counter += 1;
            *counter
        };
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let copy = self
            .private_dir
            .path()
            .join(format!("{stem}-g{generation}-{}.so", &sha256[..12]));
        private_dir::write_copy(&copy, bytes).map_err(|source| LoadError::Copy {
            file: file.to_owned(),
            copy_dir: self.private_dir().to_owned(),
            source,
        })?;

        if let Some(exe) = &self.preflight {
            if !self.cleared.contains(&sha256) {
                if let Err(failure) = preflight::run(exe, &copy, self.load_timeout).await {
                    let _ = std::fs::remove_file(&copy);
                    let (file, plugin) = (file.to_owned(), info.name);
                    return Err(match failure {
                        preflight::Failure::Open(detail) => LoadError::Open {
                            file,
                            plugin,
                            detail,
                        },
                        preflight::Failure::Trap(detail) => LoadError::Preflight {
                            file,
                            plugin,
                            detail,
                        },
                    });
                }
                self.cleared.insert(sha256.clone());
            }
        }

        match open_on_own_thread(
            copy.clone(),
            plugin_file_name(file),
            generation,
            self.load_timeout,
        )
        .await
        {
            Ok((handle, module)) => Ok(Arc::new(Library {
                facts: LibraryFacts {
                    info,
                    file: file.to_owned(),
                    copy,
                    generation,
                    sha256,
                    loaded_at: SystemTime::now(),
                    // `None` from a plugin built for interface 1.0.
                    default_requires: module
                        .default_requires()
                        .map(|names| names.iter().map(|n| n.as_str().to_owned()).collect())
                        .unwrap_or_default(),
                },
                module,
                handle: Mutex::new(Some(handle)),
            })),
            Err(failure) => {
                // The copy may still be mapped (a leaked layout-checked library); deleting
                // the file is harmless either way.
                let _ = std::fs::remove_file(&copy);
                Err(failure.into_error(file.to_owned(), info.name, self.load_timeout))
            }
        }
    }
}

/// Opens a generation the host already loaded, from its private copy, in an isolated
/// container's process (`isolation`): the layout check and the open on a joined thread, as
/// in the host. The copy is the host's own (a read-only file in its 0700 copy folder,
/// written from the bytes whose whole-file ELF checks and interface gate it passed), so it is
/// not read and inspected again here: that was a read of the whole file (megabytes) and a
/// parse on every start and restart of an isolated container. The copy stays the host's:
/// this process never unloads it, and ends instead.
pub async fn open_existing(
    facts: LibraryFacts,
    timeout: Duration,
) -> Result<Arc<Library>, LoadError> {
    let file = facts.file.clone();
    let name = plugin_file_name(&file);
    match open_on_own_thread(facts.copy.clone(), name, facts.generation, timeout).await {
        Ok((handle, module)) => Ok(Arc::new(Library {
            facts,
            module,
            handle: Mutex::new(Some(handle)),
        })),
        Err(failure) => {
            let plugin = facts.info.name.clone();
            Err(failure.into_error(file, plugin, timeout))
        }
    }
}

/// A plugin file's name, for the crash lines.
fn plugin_file_name(file: &Path) -> String {
    file.file_name().map_or_else(
        || file.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Hex SHA-256 of a file's content: the identity of a plugin version.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

enum OpenFailure {
    Layout(String),
    Other(String),
    Timeout,
}

impl OpenFailure {
    fn into_error(self, file: PathBuf, plugin: String, timeout: Duration) -> LoadError {
        match self {
            Self::Layout(detail) => LoadError::LayoutMismatch {
                file,
                plugin,
                detail,
            },
            Self::Other(detail) => LoadError::Open {
                file,
                plugin,
                detail,
            },
            Self::Timeout => LoadError::Timeout {
                file,
                plugin,
                timeout,
            },
        }
    }
}

/// An error and every cause under it, `: `-separated: libloading's "dlopen failed" says
/// why (dlerror's text, such as a `noexec` mount's "failed to map segment") only there.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Opens the copy and runs abi_stable's checks on a thread joined before returning, so any
/// thread-local the plugin's initialisation touches dies with that thread.
async fn open_on_own_thread(
    copy: PathBuf,
    file_name: String,
    generation: u64,
    timeout: Duration,
) -> Result<(libloading::Library, PluginModRef), OpenFailure> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("balut-load".into())
        .spawn(move || {
            // The file's initializers run here: a crash or an exit in them is named.
            let _named =
                crate::crash::name_this_thread(crate::crash::Role::Load, &file_name, generation);
            let _ = tx.send(open_and_check(&copy));
        })
        .map_err(|e| OpenFailure::Other(format!("spawning the load thread: {e}")))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => {
            let _ = thread.join();
            result
        }
        Ok(Err(_)) => Err(OpenFailure::Other("the load thread panicked".into())),
        // The thread is left behind with the library: it is never closed.
        Err(_) => Err(OpenFailure::Timeout),
    }
}

fn open_and_check(copy: &Path) -> Result<(libloading::Library, PluginModRef), OpenFailure> {
    // SAFETY: the file is a private copy that `elf::inspect` showed to be a whole ELF shared
    // object for this machine exporting a Balut declaration with a compatible interface
    // version. Its initialisers run here, on a thread that is joined right after.
    let handle = unsafe { libloading::Library::new(copy) }
        .map_err(|e| OpenFailure::Other(with_causes(&e)))?;
    let header_name = abi_stable::library::ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes();
    // SAFETY: the symbol is abi_stable's exported `LibHeader` static; abi_stable's own loader
    // reads it the same way (`abi_header_from_raw_library`): the symbol's address is the
    // `AbiHeaderRef`. The reference is only used while `handle` stays open.
    let header: Result<AbiHeaderRef, _> =
        unsafe { handle.get::<AbiHeaderRef>(header_name) }.map(|s| *s);
    let header = match header {
        Ok(header) => header,
        Err(e) => return Err(OpenFailure::Other(with_causes(&e))),
    };
    let lib_header = header
        .upgrade()
        .map_err(|e| OpenFailure::Other(e.to_string()))?;
    if let Err(detail) = check_layout(lib_header) {
        drop(handle);
        return Err(OpenFailure::Layout(detail));
    }
    // SAFETY: `check_layout` just checked the plugin's root module layout against the
    // host's; this runs abi_stable's version check and the plugin's root module constructor.
    match unsafe { lib_header.init_root_module_with_unchecked_layout::<PluginModRef>() } {
        Ok(module) => Ok((handle, module)),
        Err(error) => {
            // Rendered while the library, whose statics it may point into, is still open.
            let detail = error.to_string();
            drop(error);
            drop(handle);
            Err(OpenFailure::Other(detail))
        }
    }
}
