//! The file, pre-flight and layout steps of `balut check`: the host's look at a plugin
//! file, then its pre-flight in a child process and, only once that passed, the open here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::report::{Report, Step, Verdict};
use super::{Setup, load_failed};
use crate::loader::{self, Library, LoadError, Loader, PluginInfo};
use crate::platform::{LookRules, Observation, is_candidate, look};

/// Looks at the file as the host looks at a name in its plugin folder (the file's own
/// folder stands for it), and reads it once.
pub(super) fn read(setup: &Setup) -> Result<(Vec<u8>, String), (&'static str, String)> {
    let file = &setup.file;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let folder = std::fs::canonicalize(&parent)
        .map_err(|e| ("io", format!("{}: cannot resolve: {e}", parent.display())))?;
    if setup.strict_modes {
        crate::trust::check_folder(&folder).map_err(|e| ("untrusted", e.to_string()))?;
    }
    let rules = LookRules {
        plugin_dir: folder.clone(),
        strict_modes: setup.strict_modes,
        max_bytes: setup.config.host.max_plugin_bytes.get(),
    };
    let content = match look(&folder.join(&name), &rules) {
        Observation::Content(content) => content,
        Observation::Unusable {
            problem, message, ..
        } => return Err((problem.as_str(), message)),
        Observation::Gone => return Err(("io", format!("{}: gone", file.display()))),
        Observation::Changing => {
            return Err((
                "changing",
                format!("{}: changed while it was read", file.display()),
            ));
        }
    };
    let bytes = Arc::unwrap_or_clone(content.bytes);
    let trust = if setup.strict_modes {
        "trusted (only its owner can write it and its folder)"
    } else {
        "trust not checked (--no-strict-modes)"
    };
    let mut detail = format!("{} bytes, {trust}", bytes.len());
    if !is_candidate(&name) {
        detail.push_str(&format!(
            "; a plugin folder would ignore `{name}`: only `*.so` files not starting with '.' are loaded"
        ));
    }
    Ok((bytes, detail))
}

/// The pre-flight of the bytes in a child process, then, only if it passed, the open in
/// this process with abi_stable's layout check. Returns the library, the executable that
/// runs children and the loader (whose private folder holds the copy).
pub(super) async fn open(
    setup: &Setup,
    bytes: &[u8],
    info: &PluginInfo,
    report: &mut Report,
) -> Option<(Arc<Library>, PathBuf, Loader)> {
    let since = Instant::now();
    let copy_dir = setup.config.host.copy_dir.as_deref();
    let prepared = loader::check_copy_dir(copy_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            Loader::new(copy_dir, setup.load_timeout())
                .map_err(|e| format!("cannot create the private copy folder: {e}"))
        })
        .and_then(|loader| {
            let exe = loader::preflight::own_executable()
                .map_err(|e| format!("cannot find balut's own executable: {e}"))?;
            Ok((loader, exe))
        });
    let (mut loader, exe) = match prepared {
        Ok(prepared) => prepared,
        Err(detail) => {
            report.push(Step::new("preflight", Verdict::Fail, since, detail).kind("host"));
            return None;
        }
    };
    let hash = loader::content_hash(bytes);
    let copy = loader
        .private_dir()
        .join(format!("preflight-{}.so", &hash[..12]));
    if let Err(e) = std::fs::write(&copy, bytes) {
        let detail = format!("cannot write a copy into {}: {e}", copy.display());
        report.push(Step::new("preflight", Verdict::Fail, since, detail).kind("copy_failed"));
        return None;
    }
    let preflight = loader::preflight::run(&exe, &copy, setup.load_timeout()).await;
    let _ = std::fs::remove_file(&copy);
    if let Err(failure) = preflight {
        let (file, plugin) = (setup.file.clone(), info.name.clone());
        let error = match failure {
            loader::preflight::Failure::Open(detail) => LoadError::Open {
                file,
                plugin,
                detail,
            },
            loader::preflight::Failure::Trap(detail) => LoadError::Preflight {
                file,
                plugin,
                detail,
            },
        };
        report.push(load_failed("preflight", since, &error));
        return None;
    }
    let detail = "opened and closed in a child process: its initializers and finalizers \
                  neither hang, crash nor exit";
    report.push(Step::new("preflight", Verdict::Pass, since, detail.into()));

    let since = Instant::now();
    match loader.load_hashed(&setup.file, bytes, hash).await {
        Ok(library) => {
            let mut detail = "opened; abi_stable's layout check passed".to_owned();
            let requires = &library.facts.default_requires;
            if !requires.is_empty() {
                detail.push_str(&format!(
                    "; its instances require by default: {}",
                    requires.join(", ")
                ));
            }
            report.push(Step::new("layout", Verdict::Pass, since, detail));
            Some((library, exe, loader))
        }
        Err(error) => {
            report.push(load_failed("layout", since, &error));
            None
        }
    }
}
