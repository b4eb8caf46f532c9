//! Watches the plugin folder and turns file-system events into typed [`FolderEvent`]s.
//!
//! Events only say "look at this name again": the supervisor decides what changed by
//! reading the folder, so lost, merged or reordered events cannot mislead it. Overflows and
//! watcher errors ask for a full rescan.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderEvent {
    /// Something happened to this file name in the folder.
    Changed(PathBuf),
    /// A file was renamed to this name: an atomic rename brings a whole file, with nothing
    /// left to wait for (a later write to it is a `Changed`).
    Arrived(PathBuf),
    /// Events may have been lost; compare the whole folder.
    Rescan(String),
}

/// Keeps the watch alive; dropping it stops watching.
pub struct FolderWatcher {
    _watcher: RecommendedWatcher,
}

/// Whether an event kind can mean the file's content or presence changed. Opens, reads and
/// read-only closes (ours included) cannot.
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether the event is a rename whose target is its (last) path.
fn renamed_to(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    )
}

/// Starts watching `dir` (not recursively), sending events to `events`.
pub fn watch(dir: &Path, events: UnboundedSender<FolderEvent>) -> notify::Result<FolderWatcher> {
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        let sent = match result {
            Ok(event) if event.need_rescan() => {
                events.send(FolderEvent::Rescan("the watcher lost events".into()))
            }
            Ok(event) if renamed_to(&event.kind) => {
                // `Both` carries [from, to]; `To` only [to]: the last path arrived.
                let mut paths = event.paths;
                let arrived = paths.pop();
                paths
                    .into_iter()
                    .map(FolderEvent::Changed)
                    .chain(arrived.map(FolderEvent::Arrived))
                    .try_for_each(|event| events.send(event))
            }
            Ok(event) if relevant(&event.kind) => event
                .paths
                .into_iter()
                .try_for_each(|path| events.send(FolderEvent::Changed(path))),
            Ok(_) => Ok(()),
            Err(error) => events.send(FolderEvent::Rescan(format!("watcher error: {error}"))),
        };
        // The receiver is gone only when the host is shutting down.
        drop(sent);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(FolderWatcher { _watcher: watcher })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reports_creates_writes_renames_and_removes_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _watcher = watch(dir.path(), tx).unwrap();
        let file = dir.path().join("a.so");
        std::fs::write(&file, b"one").unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            seen.push(event);
        }
        assert!(
            seen.contains(&FolderEvent::Changed(file.clone())),
            "{seen:?}"
        );

        let _ = std::fs::read(&file).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(
            quiet.is_err(),
            "reading the file must not look like a change: {quiet:?}"
        );

        std::fs::rename(&file, dir.path().join("b.so")).unwrap();
        std::fs::remove_file(dir.path().join("b.so")).unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            seen.push(event);
        }
        assert!(seen.contains(&FolderEvent::Changed(file)), "{seen:?}");
        assert!(
            seen.contains(&FolderEvent::Changed(dir.path().join("b.so"))),
            "{seen:?}"
        );
    }
}
