//! Checking a container's config against its plugin's config type without constructing
//! anything (interface 1.2).
//!
//! The check runs plugin code (the config type's `Deserialize`), so, like every call into a
//! plugin, it runs on a thread of its own, never on a tokio thread: a thread-local the plugin
//! registers there dies with that thread, which is joined while the caller still holds the
//! library.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RStr;
use tokio::sync::oneshot;

use super::{CallError, Library};
use crate::crash;

/// What a plugin says of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigCheck {
    /// The config deserializes into the plugin's config type: the constructor would get past
    /// reading it (it may still refuse it for other reasons).
    Accepted,
    /// The config does not fit: `path` is the dotted key path of the problem (`limits.max`,
    /// `items[2].name`; empty for the config as a whole) and `message` serde's message (or
    /// `panicked: ...` when the plugin's `Deserialize` panicked).
    Refused { path: String, message: String },
    /// The plugin is built for an interface older than 1.2 and cannot check without
    /// constructing.
    Unsupported,
}

/// Asks `library`'s plugin whether `config_json` (the container's `config` table as JSON)
/// fits its config type, without constructing a container.
///
/// The call runs on a short-lived thread that holds a clone of `library` and is joined
/// before this returns. If it does not answer within `timeout`, this returns
/// [`CallError::Timeout`] and leaves the thread running; the library then stays loaded at
/// least until that thread has ended (thread-local destructors included), so it is never
/// closed under it.
pub async fn check_config(
    library: &Arc<Library>,
    config_json: &str,
    timeout: Duration,
) -> Result<ConfigCheck, CallError> {
    // `None` from a plugin built for interface 1.0 or 1.1.
    let Some(check) = library.module().check_config() else {
        return Ok(ConfigCheck::Unsupported);
    };
    let config_json = config_json.to_owned();
    let held = Arc::clone(library);
    let file_name = library.facts.file.file_name().map_or_else(
        || library.facts.file.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let generation = library.facts.generation;
    let (tx, rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("balut-check".into())
        .spawn(move || {
            let _named = crash::name_this_thread(crash::Role::Check, &file_name, generation);
            let outcome = match check(RStr::from_str(&config_json)).into_result() {
                Ok(()) => ConfigCheck::Accepted,
                // Converted here: the plugin's strings are freed on this thread.
                Err(refused) => ConfigCheck::Refused {
                    path: refused.path.into_string(),
                    message: refused.message.into_string(),
                },
            };
            let _ = tx.send(outcome);
            drop(held);
        })
        .map_err(|e| CallError::Failed(format!("spawning the config check thread: {e}")))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(answer) => {
            // The thread has answered (or died); joining waits for its thread-local
            // destructors, which must finish while `library` is still held.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            answer.map_err(|_| {
                CallError::Failed("the config check thread ended without an answer".into())
            })
        }
        Err(_) => {
            keep_until_ended(library, thread);
            Err(CallError::Timeout {
                call: "the config check",
                timeout,
            })
        }
    }
}

/// Keeps `library` loaded until `thread` has ended. The thread drops its own `Arc` when its
/// closure returns, before its thread-local destructors run; an unload in between would close
/// the library under them. A plain waiting thread (it runs no plugin code) holds one more
/// `Arc` until the join; if it cannot be spawned, that `Arc` is leaked and the library is
/// never closed, like a stuck container's.
fn keep_until_ended(library: &Arc<Library>, thread: std::thread::JoinHandle<()>) {
    let spare = Arc::clone(library);
    let kept = Arc::clone(library);
    let waiter = std::thread::Builder::new()
        .name("balut-check-wait".into())
        .spawn(move || {
            let _ = thread.join();
            drop(kept);
        });
    match waiter {
        Ok(_) => drop(spare),
        Err(_) => std::mem::forget(spare),
    }
}
