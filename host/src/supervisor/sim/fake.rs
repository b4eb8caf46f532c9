//! A fake world for the simulation: a plugin folder in memory whose files are recipes
//! (which plugin, which version, which faults), libraries that are only records, and
//! workers whose calls succeed, fail, panic or hang on tokio's paused clock. The world
//! records what the invariants need: which generations are in memory, which were leaked
//! by stuck threads, every load, and the order of stops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::loader::{
    CallError, ConfigCheck, HealthReport, InterfaceVersion, LibraryFacts, LoadError, PluginInfo,
    UnloadReport,
};
use crate::platform::{
    Calls, Content, Generation, LookRules, Observation, Platform, Stamp, Unloaded, is_candidate,
};
use crate::services::HostServices;
use crate::watcher::FolderEvent;

/// What one call does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    #[default]
    Ok,
    Fail,
    Panic,
    /// Never returns: the call overruns its timeout and the worker is stuck.
    Hang,
    /// Returns after this many milliseconds.
    Slow(u64),
}

/// A plugin file's content in the fake folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub plugin: String,
    pub version: u32,
    pub new: Act,
    pub start: Act,
    pub stop: Act,
    pub drop: Act,
    pub health: Act,
    pub ready: Act,
    /// Still mapped after dlclose (a thread-local pinned it).
    pub stays_mapped: bool,
    pub default_requires: Vec<String>,
}

/// A file in the fake folder.
#[derive(Debug, Clone)]
pub enum FakeFile {
    Plugin(Recipe),
    /// Not a library at all.
    Garbage(u32),
}

impl FakeFile {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Plugin(recipe) => serde_json::to_vec(recipe).unwrap_or_default(),
            Self::Garbage(n) => format!("garbage {n}").into_bytes(),
        }
    }
}

/// One load, for the rollback invariant.
#[derive(Debug, Clone)]
pub struct LoadRecord {
    pub file: PathBuf,
    pub hash: String,
}

/// Everything the fake platform and the driver share.
#[derive(Default)]
pub struct World {
    pub folder: BTreeMap<PathBuf, (FakeFile, u64)>,
    next_inode: u64,
    /// Generations loaded and not closed (or closed but still mapped): (file, generation).
    pub in_memory: BTreeSet<(String, u64)>,
    /// Generations held by threads that will never end.
    pub leaked: Vec<Arc<FakeLibrary>>,
    pub loads: Vec<LoadRecord>,
    /// Every close, for failure reports: (file, generation).
    pub unloads: Vec<(String, u64)>,
    /// `stop` calls, in order.
    pub stops: Vec<String>,
    /// The `Context` of each live instance, by container.
    pub contexts: BTreeMap<String, HostServices>,
    /// Whether each live instance's process has ended (as an isolated one's can), by
    /// container.
    pub processes: BTreeMap<String, Arc<AtomicBool>>,
    /// Health checks fail for these plugins.
    pub sick: BTreeSet<String>,
    next_generation: BTreeMap<PathBuf, u64>,
    events: Option<UnboundedSender<FolderEvent>>,
    /// Make the next load panic inside the supervisor (for the panic test).
    pub panic_on_load: bool,
}

impl World {
    /// Puts `file` at `path`, as a rename into the folder would, and sends the event.
    pub fn put(&mut self, path: &Path, file: FakeFile) {
        self.next_inode += 1;
        self.folder.insert(path.to_owned(), (file, self.next_inode));
        self.event(path);
    }

    pub fn remove(&mut self, path: &Path) {
        if self.folder.remove(path).is_some() {
            self.event(path);
        }
    }

    pub fn rename(&mut self, from: &Path, to: &Path) {
        if let Some(entry) = self.folder.remove(from) {
            self.folder.insert(to.to_owned(), entry);
            self.event(from);
            if let Some(events) = &self.events {
                let _ = events.send(FolderEvent::Arrived(to.to_owned()));
            }
        }
    }

    fn event(&self, path: &Path) {
        if let Some(events) = &self.events {
            let _ = events.send(FolderEvent::Changed(path.to_owned()));
        }
    }

    /// The hash of the content at `path` now.
    pub fn hash_of(&self, path: &Path) -> Option<String> {
        self.folder
            .get(path)
            .map(|(file, _)| crate::loader::content_hash(&file.bytes()))
    }
}

pub type SharedWorld = Arc<Mutex<World>>;

pub fn lock(world: &SharedWorld) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct FakeLibrary {
    facts: LibraryFacts,
    recipe: Recipe,
    bytes: Vec<u8>,
}

impl Generation for FakeLibrary {
    fn facts(&self) -> &LibraryFacts {
        &self.facts
    }
}

fn key(library: &FakeLibrary) -> (String, u64) {
    (
        crate::platform::file_name(library.file()),
        library.generation(),
    )
}

pub struct FakePlatform {
    pub world: SharedWorld,
}

impl Platform for FakePlatform {
    type Library = FakeLibrary;
    type Worker = FakeWorker;

    fn watch(&mut self, _dir: &Path, events: UnboundedSender<FolderEvent>) -> Result<(), String> {
        lock(&self.world).events = Some(events);
        Ok(())
    }

    fn unwatch(&mut self) {
        lock(&self.world).events = None;
    }

    fn identity(&self, _dir: &Path) -> std::io::Result<(u64, u64)> {
        Ok((0, 1))
    }

    fn list(&self, _dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        Ok(lock(&self.world)
            .folder
            .keys()
            .filter(|p| is_candidate(&p.to_string_lossy()))
            .cloned()
            .collect())
    }

    fn stamp(&self, path: &Path) -> Option<Stamp> {
        let world = lock(&self.world);
        let (file, inode) = world.folder.get(path)?;
        Some(Stamp {
            len: file.bytes().len() as u64,
            modified: None,
            inode: *inode,
        })
    }

    fn look(&self, path: &Path, _rules: &LookRules) -> Observation {
        let world = lock(&self.world);
        let Some((file, inode)) = world.folder.get(path) else {
            return Observation::Gone;
        };
        let bytes = file.bytes();
        Observation::Content(Content {
            hash: crate::loader::content_hash(&bytes),
            stamp: Stamp {
                len: bytes.len() as u64,
                modified: None,
                inode: *inode,
            },
            bytes: Arc::new(bytes),
        })
    }

    fn read_copy(&self, library: &FakeLibrary) -> std::io::Result<Vec<u8>> {
        Ok(library.bytes.clone())
    }

    async fn load(
        &mut self,
        path: &Path,
        content: &Content,
    ) -> Result<Arc<FakeLibrary>, LoadError> {
        // Loading takes a little time, as it does.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut world = lock(&self.world);
        if std::mem::take(&mut world.panic_on_load) {
            panic!("simulated bug: a panic inside the supervisor");
        }
        world.loads.push(LoadRecord {
            file: path.to_owned(),
            hash: content.hash.clone(),
        });
        let Ok(recipe) = serde_json::from_slice::<Recipe>(&content.bytes) else {
            return Err(LoadError::MissingExport {
                file: path.to_owned(),
                symbol: "BALUT_PLUGIN_DECLARATION",
            });
        };
        let counter = world.next_generation.entry(path.to_owned()).or_insert(0);
        *counter += 1;
        let generation = *counter;
        let library = FakeLibrary {
            facts: LibraryFacts {
                info: PluginInfo {
                    name: recipe.plugin.clone(),
                    version: format!("0.{}.0", recipe.version),
                    interface: InterfaceVersion::HOST,
                },
                file: path.to_owned(),
                copy: PathBuf::from(format!("/private/{}-g{generation}", path.display())),
                generation,
                sha256: content.hash.clone(),
                loaded_at: SystemTime::UNIX_EPOCH,
                default_requires: recipe.default_requires.clone(),
            },
            recipe,
            bytes: content.bytes.to_vec(),
        };
        world.in_memory.insert(key(&library));
        Ok(Arc::new(library))
    }

    fn unload(
        &mut self,
        library: Arc<FakeLibrary>,
        done: UnboundedSender<Unloaded>,
    ) -> Result<(), Arc<FakeLibrary>> {
        let library = Arc::try_unwrap(library)?;
        let still_mapped = library.recipe.stays_mapped;
        lock(&self.world).unloads.push(key(&library));
        if !still_mapped {
            lock(&self.world).in_memory.remove(&key(&library));
        }
        let _ = done.send(Unloaded {
            facts: library.facts.clone(),
            report: UnloadReport {
                still_mapped,
                errors: Vec::new(),
            },
            took: Duration::ZERO,
        });
        Ok(())
    }

    async fn check_config(
        &self,
        _library: &Arc<FakeLibrary>,
        config_json: &str,
        _timeout: Duration,
    ) -> Result<ConfigCheck, CallError> {
        Ok(check(config_json))
    }

    fn spawn(
        &self,
        name: &str,
        library: Arc<FakeLibrary>,
        _confinement: &crate::platform::Confinement,
        _listeners: &crate::sockets::Listeners,
    ) -> std::io::Result<FakeWorker> {
        Ok(FakeWorker {
            name: name.to_owned(),
            library,
            world: self.world.clone(),
            stuck: AtomicBool::new(false),
            ended: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// The fake plugins' config type: a table whose keys are among `a`, `b`, `c`.
fn check(config_json: &str) -> ConfigCheck {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return ConfigCheck::Refused {
            path: String::new(),
            message: "not JSON".into(),
        };
    };
    let unknown = value.as_object().and_then(|o| {
        o.keys()
            .find(|k| !matches!(k.as_str(), "a" | "b" | "c"))
            .cloned()
    });
    match unknown {
        Some(key) => ConfigCheck::Refused {
            message: format!("unknown field `{key}`, expected one of `a`, `b`, `c`"),
            path: key,
        },
        None => ConfigCheck::Accepted,
    }
}

pub struct FakeWorker {
    name: String,
    library: Arc<FakeLibrary>,
    world: SharedWorld,
    stuck: AtomicBool,
    /// Its process ended (killed, crashed): calls fail, and nothing of it stays behind.
    ended: Arc<AtomicBool>,
}

impl FakeWorker {
    async fn act(&self, act: Act, call: &'static str, timeout: Duration) -> Result<(), CallError> {
        if self.ended.load(Ordering::SeqCst) {
            return Err(CallError::Ended(
                "killed by signal SIGSEGV (simulated)".into(),
            ));
        }
        if self.stuck.load(Ordering::SeqCst) {
            return Err(CallError::Stuck);
        }
        match act {
            Act::Ok => Ok(()),
            Act::Fail => Err(CallError::Failed(format!("{call} failed (simulated)"))),
            Act::Panic => Err(CallError::Panicked(format!(
                "panicked: in {call} (simulated)"
            ))),
            Act::Hang => {
                tokio::time::sleep(timeout).await;
                self.stuck.store(true, Ordering::SeqCst);
                Err(CallError::Timeout { call, timeout })
            }
            Act::Slow(ms) => {
                let took = Duration::from_millis(ms);
                if took > timeout {
                    tokio::time::sleep(timeout).await;
                    self.stuck.store(true, Ordering::SeqCst);
                    return Err(CallError::Timeout { call, timeout });
                }
                tokio::time::sleep(took).await;
                Ok(())
            }
        }
    }

    fn health_act(&self, act: Act) -> Act {
        if lock(&self.world).sick.contains(&self.library.recipe.plugin) {
            Act::Fail
        } else {
            act
        }
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        if self.stuck.load(Ordering::SeqCst) && !self.ended.load(Ordering::SeqCst) {
            // The stuck thread never ends; it holds its generation for good.
            lock(&self.world).leaked.push(self.library.clone());
        }
    }
}

fn report(healthy: bool, message: &str) -> HealthReport {
    HealthReport {
        healthy,
        message: message.to_owned(),
        duration: Duration::ZERO,
    }
}

impl Calls for FakeWorker {
    type Library = FakeLibrary;

    fn library(&self) -> &Arc<FakeLibrary> {
        &self.library
    }

    async fn construct(
        &self,
        _name: &str,
        config_json: String,
        services: &HostServices,
        timeout: Duration,
    ) -> Result<(), CallError> {
        if let ConfigCheck::Refused { path, message } = check(&config_json) {
            return Err(CallError::BadConfig(format!("{path}: {message}")));
        }
        self.act(self.library.recipe.new, "the constructor", timeout)
            .await?;
        let mut world = lock(&self.world);
        world.contexts.insert(self.name.clone(), services.clone());
        world
            .processes
            .insert(self.name.clone(), self.ended.clone());
        Ok(())
    }

    async fn start(&self, timeout: Duration) -> Result<(), CallError> {
        self.act(self.library.recipe.start, "start", timeout).await
    }

    async fn stop(&self, timeout: Duration) -> Result<(), CallError> {
        lock(&self.world).stops.push(self.name.clone());
        self.act(self.library.recipe.stop, "stop", timeout).await
    }

    async fn health(&self, timeout: Duration) -> Result<HealthReport, CallError> {
        let act = self.health_act(self.library.recipe.health);
        match act {
            Act::Fail => Ok(report(false, "unhealthy (simulated)")),
            other => self
                .act(other, "health", timeout)
                .await
                .map(|()| report(true, "")),
        }
    }

    async fn ready(&self, timeout: Duration) -> Result<Option<HealthReport>, CallError> {
        match self.library.recipe.ready {
            Act::Fail => Ok(Some(report(false, "not ready (simulated)"))),
            other => self
                .act(other, "ready", timeout)
                .await
                .map(|()| Some(report(true, ""))),
        }
    }

    async fn handover(
        &self,
        timeout: Duration,
    ) -> Result<Option<crate::services::Handover>, CallError> {
        self.act(Act::Ok, "handover", timeout).await.map(|()| None)
    }

    async fn dispose(&self, timeout: Duration) -> Result<(), CallError> {
        self.act(self.library.recipe.drop, "drop", timeout).await
    }

    async fn finish(self, _timeout: Duration) -> Result<(), CallError> {
        if self.stuck.load(Ordering::SeqCst) && !self.ended.load(Ordering::SeqCst) {
            return Err(CallError::Stuck);
        }
        Ok(())
    }
}
