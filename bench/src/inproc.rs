//! Containers run in this process through `balut::loader`, with the host's own steps and
//! in the host's order (as `host/src/supervisor/containers.rs` does): load a generation
//! from a private copy, spawn its worker, construct, start; then stop, dispose, finish
//! (join the thread) and unload once nothing else holds the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use balut::loader::{Library, Loader, Worker};
use balut::services::{HostServices, NoticeFrom};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Generous: the benchmarks measure, they do not probe timeouts.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime flavour the host uses (`host/src/lib.rs`): tokio's multi-threaded one.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// A copy of a plugin file in a temporary folder of its own, which also takes the private
/// copies of its generations.
pub struct PluginFile {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub bytes: Vec<u8>,
}

impl PluginFile {
    pub fn copy_of(library: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(library)?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("libchaos.so");
        std::fs::write(&file, &bytes)?;
        Ok(Self { dir, file, bytes })
    }
}

/// What the supervisor would hold: the loader and the channel containers' notices go to.
pub struct Bench {
    pub loader: Loader,
    notices: UnboundedSender<NoticeFrom>,
    _inbox: UnboundedReceiver<NoticeFrom>,
    next_instance: u64,
}

impl Bench {
    /// Private copies go to a fresh folder under `copy_dir` (else the system's temp folder).
    pub fn new(copy_dir: Option<&Path>) -> anyhow::Result<Self> {
        let (notices, inbox) = unbounded_channel();
        Ok(Self {
            loader: Loader::new(copy_dir, TIMEOUT).context("creating the loader")?,
            notices,
            _inbox: inbox,
            next_instance: 0,
        })
    }

    /// Loads `bytes` (the content of `file`) as a new generation.
    pub async fn load(&mut self, file: &Path, bytes: &[u8]) -> anyhow::Result<Arc<Library>> {
        Ok(self.loader.load_bytes(file, bytes).await?)
    }

    /// Spawns the worker of container `name`, constructs it with an empty config and
    /// starts it.
    pub async fn start(&mut self, name: &str, library: &Arc<Library>) -> anyhow::Result<Running> {
        let worker = Worker::spawn(name, library.clone())?;
        self.next_instance += 1;
        let services = HostServices::new(
            name,
            library.facts.generation,
            self.next_instance,
            self.notices.clone(),
        );
        worker
            .construct(name, "{}".to_owned(), services.to_ffi(), TIMEOUT)
            .await
            .with_context(|| format!("constructing {name}"))?;
        worker
            .start(TIMEOUT)
            .await
            .with_context(|| format!("starting {name}"))?;
        Ok(Running { worker, services })
    }
}

/// A started container.
pub struct Running {
    pub worker: Worker,
    services: HostServices,
}

impl Running {
    /// Stops it, drops the plugin's value and joins its thread; returns its library.
    pub async fn stop(self) -> anyhow::Result<Arc<Library>> {
        self.services.request_stop();
        self.worker.stop(TIMEOUT).await.context("stop")?;
        self.worker.dispose(TIMEOUT).await.context("dispose")?;
        let library = self.worker.library().clone();
        self.worker.finish(TIMEOUT).await.context("finish")?;
        Ok(library)
    }
}

/// Closes the library (the caller must hold the last reference) and checks it is gone from
/// the process's memory map.
pub fn unload(library: Arc<Library>) -> anyhow::Result<()> {
    let copy = library.facts.copy.clone();
    let report = library
        .unload()
        .map_err(|_| anyhow::anyhow!("{} is still held", copy.display()))?;
    if let Some(error) = report.errors.first() {
        bail!("unloading {}: {error}", copy.display());
    }
    if report.still_mapped {
        bail!("{} is still mapped after unload", copy.display());
    }
    Ok(())
}
