//! The real world: the file system, `loader::Loader`, `loader::Worker`, the notify watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::{Calls, Content, Generation, LookRules, Observation, Platform, Stamp, Unloaded};
use crate::loader::{
    self, CallError, ConfigCheck, HealthReport, Library, LibraryFacts, LoadError, Loader,
    UnloadReport, Worker,
};
use crate::services::HostServices;
use crate::watcher::{self, FolderEvent, FolderWatcher};

/// The file system and the loader.
pub struct Real {
    loader: Loader,
    watcher: Option<FolderWatcher>,
}

impl Real {
    /// Creates the private copy folder (under `copy_dir`, or the system's temp folder).
    /// With `preflight`, each new content is first opened and closed in a child process
    /// running this executable (`loader::preflight`).
    pub fn new(
        copy_dir: Option<&Path>,
        load_timeout: Duration,
        preflight: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let loader = Loader::new(copy_dir, load_timeout)?;
        Ok(Self {
            loader: match preflight {
                Some(exe) => loader.with_preflight(exe),
                None => loader,
            },
            watcher: None,
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

impl Calls for Worker {
    type Library = Library;

    fn library(&self) -> &Arc<Library> {
        Worker::library(self)
    }
    async fn construct(
        &self,
        name: &str,
        config_json: String,
        services: &HostServices,
        timeout: Duration,
    ) -> Result<(), CallError> {
        Worker::construct(self, name, config_json, services.to_ffi(), timeout).await
    }
    async fn start(&self, timeout: Duration) -> Result<(), CallError> {
        Worker::start(self, timeout).await
    }
    async fn stop(&self, timeout: Duration) -> Result<(), CallError> {
        Worker::stop(self, timeout).await
    }
    async fn health(&self, timeout: Duration) -> Result<HealthReport, CallError> {
        Worker::health(self, timeout).await
    }
    async fn ready(&self, timeout: Duration) -> Result<Option<HealthReport>, CallError> {
        Worker::ready(self, timeout).await
    }
    async fn dispose(&self, timeout: Duration) -> Result<(), CallError> {
        Worker::dispose(self, timeout).await
    }
    async fn finish(self, timeout: Duration) -> Result<(), CallError> {
        Worker::finish(self, timeout).await
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

    fn spawn(&self, name: &str, library: Arc<Library>) -> std::io::Result<Worker> {
        Worker::spawn(name, library)
    }
}
