//! The status board: what the host reports about its containers and plugin files.
//!
//! The supervisor writes it, as a projection of the state it owns (it never reads the board
//! back to decide anything); the HTTP API and the sd_notify task read snapshots of it. It
//! holds plain data only (`model.rs`), never a handle into a plugin, and the containers'
//! recent log lines (`logs.rs`), which their instances' services write.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::model::{ContainerStatus, FolderStatus, NotUnloaded, PluginStatus, Snapshot};

/// Shared, cheaply cloned handle to the status board, the event log and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Board {
    inner: Arc<RwLock<Snapshot>>,
    pub events: Arc<crate::events::EventLog>,
    /// Set once the first scan loaded, registered and started everything.
    started: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by every write, so readers can tell a cached rendering is still current.
    version: Arc<std::sync::atomic::AtomicU64>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Each registered container's recent log lines (`logs.rs`).
    pub logs: Arc<crate::logs::Logs>,
}

impl Board {
    /// Marks the initial start as done.
    pub fn set_started(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the initial start is done.
    pub fn is_started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Snapshot> {
        let guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        guard
    }

    /// Reads the snapshot with its version (the number of writes so far): the same version
    /// means the same content.
    pub fn read_versioned(&self) -> (u64, RwLockReadGuard<'_, Snapshot>) {
        let guard = self.read();
        (
            self.version.load(std::sync::atomic::Ordering::SeqCst),
            guard,
        )
    }

    /// Shows `status` for its container: replaces the one of the same name, or appends it
    /// (so the list keeps the supervisor's registration order).
    pub fn put_container(&self, status: &ContainerStatus) {
        let mut snapshot = self.write();
        match snapshot
            .containers
            .iter_mut()
            .find(|c| c.name == status.name)
        {
            Some(shown) => shown.clone_from(status),
            None => snapshot.containers.push(status.clone()),
        }
    }

    /// Takes a deregistered container off the board, with its recent log lines.
    pub fn remove_container(&self, name: &str) {
        self.write().containers.retain(|c| c.name != name);
        self.logs.remove(name);
    }

    /// Shows `status` for its file, keeping the list sorted by file name.
    pub fn put_plugin(&self, status: &PluginStatus) {
        let mut snapshot = self.write();
        match snapshot
            .plugins
            .binary_search_by(|p| p.file.cmp(&status.file))
        {
            Ok(at) => snapshot.plugins[at].clone_from(status),
            Err(at) => snapshot.plugins.insert(at, status.clone()),
        }
    }

    pub fn remove_plugin(&self, file: &str) {
        self.write().plugins.retain(|p| p.file != file);
    }

    pub fn put_folder(&self, folder: &FolderStatus) {
        let mut snapshot = self.write();
        if snapshot.folder != *folder {
            snapshot.folder = folder.clone();
        }
    }

    /// Shows the generations that could not be unloaded.
    pub fn put_not_unloaded(&self, list: &[NotUnloaded]) {
        let mut snapshot = self.write();
        if snapshot.not_unloaded != list {
            snapshot.not_unloaded = list.to_vec();
        }
    }
}
