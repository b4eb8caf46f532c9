//! The real world: the file system, `loader::Loader`, `loader::Worker`, the notify watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::{
    Calls, Confinement, Content, Generation, LookRules, Observation, Platform, Stamp, Unloaded,
};
use crate::isolation;
use crate::loader::{
    self, CallError, ConfigCheck, HealthReport, Library, LibraryFacts, LoadError, Loader,
    UnloadReport,
};
use crate::model::Isolation;
use crate::services::{Handover, HostServices};
use crate::sockets::Listeners;
use crate::watcher::{self, FolderEvent, FolderWatcher};

/// The file system and the loader.
pub struct Real {
    loader: Loader,
    watcher: Option<FolderWatcher>,
    /// The `balut` executable, which isolated containers' processes run.
    exe: Option<PathBuf>,
}

impl Real {
    /// Creates the private copy folder (under `copy_dir`, or the system's temp folder).
    /// `exe` is this executable: with `preflight`, each new content is first opened and
    /// closed in a child process running it (`loader::preflight`), and isolated containers
    /// run in child processes of it (`isolation`).
    pub fn new(
        copy_dir: Option<&Path>,
        load_timeout: Duration,
        exe: Option<PathBuf>,
        preflight: bool,
    ) -> std::io::Result<Self> {
        let loader = Loader::new(copy_dir, load_timeout)?;
        Ok(Self {
            loader: match (&exe, preflight) {
                (Some(exe), true) => loader.with_preflight(exe.clone()),
                _ => loader,
            },
            watcher: None,
            exe,
        })
    }

    /// The folder holding private copies.
    pub fn private_dir(&self) -> &Path {
        self.loader.private_dir()
    }
}

impl Generation for Library {
    fn facts(&self) -> &LibraryFacts {
        &self.facts
    }
}

/// One container instance's calls: on a thread of the host, or in a child process.
pub enum Worker {
    Thread(loader::Worker),
    Process(isolation::Child),
}

/// Runs the same call on whichever worker it is.
macro_rules! either {
    ($self:expr, $worker:ident => $call:expr) => {
        match $self {
            Worker::Thread($worker) => $call,
            Worker::Process($worker) => $call,
        }
    };
}

impl Calls for Worker {
    type Library = Library;

    fn library(&self) -> &Arc<Library> {
        either!(self, w => w.library())
    }
    fn pid(&self) -> Option<u32> {
        match self {
            Self::Thread(_) => None,
            Self::Process(child) => Some(child.pid()),
        }
    }
    fn has_ended(&self) -> bool {
        match self {
            Self::Thread(_) => false,
            Self::Process(child) => child.has_ended(),
        }
    }
    async fn construct(
        &self,
        name: &str,
        config_json: String,
        services: &HostServices,
        timeout: Duration,
    ) -> Result<(), CallError> {
        match self {
            Self::Thread(w) => {
                w.construct(name, config_json, services.to_ffi(), timeout)
                    .await
            }
            Self::Process(child) => child.construct(name, config_json, services, timeout).await,
        }
    }
    async fn start(&self, timeout: Duration) -> Result<(), CallError> {
        either!(self, w => w.start(timeout).await)
    }
    async fn stop(&self, timeout: Duration) -> Result<(), CallError> {
        either!(self, w => w.stop(timeout).await)
    }
    async fn health(&self, timeout: Duration) -> Result<HealthReport, CallError> {
        either!(self, w => w.health(timeout).await)
    }
    async fn ready(&self, timeout: Duration) -> Result<Option<HealthReport>, CallError> {
        either!(self, w => w.ready(timeout).await)
    }
    async fn handover(&self, timeout: Duration) -> Result<Option<Handover>, CallError> {
        either!(self, w => w.handover(timeout).await)
    }
    async fn dispose(&self, timeout: Duration) -> Result<(), CallError> {
        either!(self, w => w.dispose(timeout).await)
    }
    fn no_more_calls(&self) {
        if let Self::Thread(worker) = self {
            worker.close();
        }
    }
    async fn finish(self, timeout: Duration) -> Result<(), CallError> {
        either!(self, w => w.finish(timeout).await)
    }
}

impl Platform for Real {
    type Library = Library;
    type Worker = Worker;

    fn watch(&mut self, dir: &Path, events: UnboundedSender<FolderEvent>) -> Result<(), String> {
        self.watcher = Some(watcher::watch(dir, events).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn unwatch(&mut self) {
        self.watcher = None;
    }

    fn identity(&self, dir: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("not a folder"));
        }
        Ok((meta.dev(), meta.ino()))
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        super::list_candidates(dir)
    }

    fn stamp(&self, path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|m| Stamp::of(&m))
    }

    fn look(&self, path: &Path, rules: &LookRules) -> Observation {
        super::look::look(path, rules)
    }

    fn read_copy(&self, library: &Library) -> std::io::Result<Vec<u8>> {
        std::fs::read(&library.facts.copy)
    }

    async fn load(&mut self, path: &Path, content: &Content) -> Result<Arc<Library>, LoadError> {
        self.loader
            .load_hashed(path, &content.bytes, content.hash.clone())
            .await
    }

    fn unload(
        &mut self,
        library: Arc<Library>,
        done: UnboundedSender<Unloaded>,
    ) -> Result<(), Arc<Library>> {
        if Arc::strong_count(&library) != 1 {
            return Err(library);
        }
        let facts = library.facts.clone();
        let close = move || {
            let began = std::time::Instant::now();
            let report = match library.unload() {
                Ok(report) => report,
                // Unreachable: this thread holds the only handle. Never closed, then.
                Err(_held) => UnloadReport {
                    still_mapped: true,
                    errors: vec!["still referenced when closing".to_owned()],
                },
            };
            let _ = done.send(Unloaded {
                facts,
                report,
                took: began.elapsed(),
            });
        };
        if let Err(e) = std::thread::Builder::new()
            .name("balut-unload".into())
            .spawn(close)
        {
            // The closure, with the library, is dropped unrun: it is never closed.
            tracing::warn!(error = %e, "cannot spawn a thread to close a library; it stays loaded");
        }
        Ok(())
    }

    async fn check_config(
        &self,
        library: &Arc<Library>,
        config_json: &str,
        timeout: Duration,
    ) -> Result<ConfigCheck, CallError> {
        loader::check_config(library, config_json, timeout).await
    }

    fn spawn(
        &self,
        name: &str,
        library: Arc<Library>,
        confinement: &Confinement,
        listeners: &Listeners,
    ) -> std::io::Result<Worker> {
        match confinement.isolation {
            Isolation::Thread => loader::Worker::spawn(name, library).map(Worker::Thread),
            Isolation::Process => {
                let exe = self.exe.as_deref().ok_or_else(|| {
                    std::io::Error::other("the path of the balut executable is unknown")
                })?;
                isolation::Child::spawn(exe, name, library, confinement.memory_max_bytes, listeners)
                    .map(Worker::Process)
            }
        }
    }
}
