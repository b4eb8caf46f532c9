//! The isolated container's process: `balut __isolate NAME`. It opens the host's private
//! copy of one generation with the host's loader and checks, makes every call into the
//! container on a `loader::Worker` thread as the host would, and relays the plugin's
//! `Context` calls back over the socket. It exits at once (`_exit`, no finalizers) when
//! the host closes the socket or dies; plugin code that crashes or exits ends it alone,
//! with the crash line on stderr naming the container.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RStr, RString, Tuple2};
use balut_plugin_api::ffi::{
    FfiContainerBox, FfiHandover, FfiHost, FfiHost_TO, FfiLevel, FfiListener,
};

use super::protocol::{self, Answer, Call, PROTOCOL, Refusal, ToChild, ToHost, WRONG_PROTOCOL};
use super::spawn::CHILD_FD;
use crate::loader::{
    self, CallError, HealthReport, InterfaceVersion, Library, LibraryFacts, PluginInfo, calls,
};
use crate::services::{Handover, clip, lend_listener};
use crate::sockets::{Address, Held, Listeners};

/// The socket's sending side, shared by the calls' replies and the plugin's threads.
struct Outbox {
    socket: Mutex<UnixStream>,
}

impl Outbox {
    /// Sends one frame; if the host is gone, so is this process.
    fn send(&self, message: &ToHost) {
        let mut socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        match protocol::write_frame(&mut *socket, message) {
            Ok(()) => {}
            // Too large to send (a log line with thousands of long fields): dropped.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
            Err(_) => crate::exit::immediately(0),
        }
    }
}

/// The child's side of the plugin's `Context`: everything goes to the host, but for the
/// held sockets (inherited) and the handed-over state (sent with the constructor's call).
#[derive(Clone)]
struct Relay {
    outbox: Arc<Outbox>,
    /// Log lines more verbose than this are not sent (the host would drop them).
    max_level: Option<u8>,
    stop_requested: Arc<AtomicBool>,
    listeners: Arc<Listeners>,
    handover: Arc<Mutex<Option<Handover>>>,
}

impl FfiHost for Relay {
    fn log(
        &self,
        level: FfiLevel,
        message: RStr<'_>,
        fields: RSlice<'_, Tuple2<RStr<'_>, RStr<'_>>>,
    ) {
        let level = match level {
            FfiLevel::Error => 0,
            FfiLevel::Warn => 1,
            FfiLevel::Info => 2,
            FfiLevel::Debug => 3,
            FfiLevel::Trace => 4,
        };
        if self.max_level.is_none_or(|max| level > max) {
            return;
        }
        self.outbox.send(&ToHost::Log {
            level,
            message: cut(message.as_str()),
            fields: fields
                .iter()
                .map(|Tuple2(key, value)| (cut(key.as_str()), cut(value.as_str())))
                .collect(),
        });
    }

    fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    fn set_ready(&self, ready: bool) {
        self.outbox.send(&ToHost::Ready(ready));
    }

    fn report_failure(&self, reason: RStr<'_>) {
        self.outbox.send(&ToHost::Failed(cut(reason.as_str())));
    }

    fn report_finished(&self, message: RStr<'_>) {
        self.outbox.send(&ToHost::Finished(cut(message.as_str())));
    }

    fn listener(&self, name: RStr<'_>) -> RResult<FfiListener, RString> {
        let result = lend_listener(&self.listeners, name.as_str());
        result.map_err(RString::from).into()
    }

    fn take_handover(&self) -> ROption<FfiHandover> {
        let taken = self
            .handover
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        taken
            .map(|h| FfiHandover {
                version: h.version,
                bytes: h.bytes.into(),
            })
            .into()
    }
}

/// `text` cut at [`MAX_LOG_BYTES`] with the host's marker, before it crosses the socket.
fn cut(text: &str) -> String {
    clip(text).into_owned()
}

/// The process's body. Returns only on a setup error; otherwise it ends with `_exit`.
pub fn main() -> ExitCode {
    // One malloc arena: a thread of the plugin's (a ticker, a worker) allocates from the
    // main arena instead of touching pages of an arena of its own, in every such process.
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only sets a tunable of glibc's allocator, and this process has
    // started no thread yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // Crash lines name the container; an `exit(N)` in plugin code keeps its code N.
    if let Err(e) = crate::crash::install_keeping_exit_codes() {
        eprintln!("balut __isolate: installing the crash handlers: {e}");
    }
    if let Err(e) = crate::crash::obey_only_the_parent() {
        eprintln!("balut __isolate: installing the SIGTERM and SIGINT handlers: {e}");
    }
    // SAFETY: the host started this process with its end of a socket pair as descriptor 3
    // (`spawn.rs`), and nothing else in this process owns or closes it.
    let socket = unsafe { UnixStream::from_raw_fd(CHILD_FD) };
    let mut reader = socket;
    let writer = match reader.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            eprintln!("balut __isolate: the host's socket: {e}");
            return ExitCode::from(1);
        }
    };
    let outbox = Arc::new(Outbox {
        socket: Mutex::new(writer),
    });
    outbox.send(&ToHost::Hello {
        protocol: PROTOCOL,
        pid: std::process::id(),
    });
    match protocol::read_frame::<ToChild>(&mut reader) {
        Ok(Some(ToChild::Hello { protocol })) if protocol == PROTOCOL => {}
        Ok(Some(ToChild::Hello { protocol })) => {
            eprintln!(
                "balut __isolate: the host speaks protocol {protocol}, this process {PROTOCOL}"
            );
            crate::exit::immediately(WRONG_PROTOCOL as u8);
        }
        _ => crate::exit::immediately(0),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("balut __isolate: starting its runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut served = Served {
        outbox,
        stop_requested: Arc::new(AtomicBool::new(false)),
        listeners: Arc::default(),
        max_level: Some(4),
        library: None,
        slot: None,
        named: None,
        runtime,
    };
    // One read per frame, mostly: the socket is read through a buffer.
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
    while let Ok(Some(message)) = protocol::read_frame::<ToChild>(&mut reader) {
        if let ToChild::Call { id, call, .. } = message {
            served.call(id, *call);
        }
    }
    // The host closed the socket (a finish) or died: nothing more to do.
    crate::exit::immediately(0)
}

/// What the process serves: the worker of its one container instance, once opened.
struct Served {
    outbox: Arc<Outbox>,
    stop_requested: Arc<AtomicBool>,
    /// The held sockets this process inherited.
    listeners: Arc<Listeners>,
    max_level: Option<u8>,
    /// The library, once opened, and the container's value, once constructed.
    library: Option<Arc<Library>>,
    slot: Option<FfiContainerBox>,
    /// This thread, named as the container's (it makes every call).
    named: Option<crate::crash::ThreadName>,
    /// For the open (the loader's open runs on a joined thread, with a timeout).
    runtime: tokio::runtime::Runtime,
}

impl Served {
    /// Serves one call, on this thread, one at a time, as a worker thread does in the host:
    /// a health check asked for during a slow call waits in the socket until it returns.
    /// The host keeps every timeout (and ends this process when one is overrun). There is
    /// no worker thread to hop to: a library is never closed in this process, so nothing
    /// needs a thread the host could join first.
    fn call(&mut self, id: u64, call: Call) {
        let call = match call {
            Call::Open {
                container,
                copy,
                file,
                generation,
                sha256,
                plugin,
                version,
                interface,
                default_requires,
                listeners,
                max_level,
            } => {
                self.listeners = Arc::new(adopt_listeners(listeners));
                self.max_level = max_level;
                let facts = LibraryFacts {
                    info: PluginInfo {
                        name: plugin,
                        version,
                        interface: InterfaceVersion {
                            major: interface.0,
                            minor: interface.1,
                        },
                    },
                    file,
                    copy,
                    generation,
                    sha256,
                    loaded_at: SystemTime::now(),
                    default_requires,
                };
                let result = self.open(&container, facts);
                self.outbox.send(&ToHost::Reply { id, result });
                return;
            }
            other => other,
        };
        let Some(library) = &self.library else {
            let result = Err(Refusal::NotOpened("the library is not open".into()));
            self.outbox.send(&ToHost::Reply { id, result });
            return;
        };
        if matches!(call, Call::Stop | Call::Dispose) {
            self.stop_requested.store(true, Ordering::SeqCst);
        }
        let slot = &mut self.slot;
        let result = match call {
            Call::Construct {
                container,
                config_json,
                handover,
            } => {
                let relay = Relay {
                    outbox: self.outbox.clone(),
                    max_level: self.max_level,
                    stop_requested: self.stop_requested.clone(),
                    listeners: self.listeners.clone(),
                    handover: Arc::new(Mutex::new(
                        handover.map(|(version, bytes)| Handover { version, bytes }),
                    )),
                };
                let host = FfiHost_TO::from_ptr(RArc::new(relay), TD_Opaque);
                calls::construct(library, &container, config_json, host)(slot)
                    .map(|()| Answer::Done)
            }
            Call::Start => calls::start(slot).map(|()| Answer::Done),
            Call::Stop => calls::stop(slot).map(|()| Answer::Done),
            Call::Dispose => calls::dispose(slot).map(|()| Answer::Done),
            Call::Health => calls::health(slot).map(health),
            Call::Ready => {
                calls::ready(slot).map(|ready| ready.map_or(Answer::NoReadiness, health))
            }
            Call::Handover => calls::handover(slot)
                .map(|state| Answer::Handover(state.map(|h| (h.version, h.bytes)))),
            Call::Open { .. } => Err(CallError::Failed("opened twice".into())),
        };
        self.outbox.send(&ToHost::Reply {
            id,
            result: result.map_err(refusal),
        });
    }

    fn open(&mut self, container: &str, facts: LibraryFacts) -> Result<Answer, Refusal> {
        if self.library.is_some() {
            return Err(Refusal::Failed("the library is already open".into()));
        }
        let generation = facts.generation;
        let library = self
            .runtime
            .block_on(loader::open_existing(facts, OPEN_TIMEOUT))
            .map_err(|e| Refusal::NotOpened(e.to_string()))?;
        // Every call runs on this thread from here on: a crash in one names the container.
        self.named = Some(crate::crash::name_this_thread(
            crate::crash::Role::Container,
            container,
            generation,
        ));
        self.library = Some(library);
        Ok(Answer::Done)
    }
}

/// The held sockets this process inherited (`spawn.rs` put them at the descriptors the
/// `Open` call names), owned from here on.
fn adopt_listeners(passed: Vec<(String, String, i32)>) -> Listeners {
    let mut listeners = Listeners::new();
    for (name, address, fd) in passed {
        // SAFETY: the host started this process with each held socket at the descriptor
        // it names in `Open` (`spawn.rs`: moved there between fork and exec), sent once;
        // nothing else in this process owns or closes it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let Ok(address) = Address::try_from(address) else {
            continue; // Never: the host wrote it from an `Address`.
        };
        listeners.insert(
            name,
            Held {
                address,
                fd: Arc::new(fd),
            },
        );
    }
    listeners
}

/// How long the open may take here; the host's own timeout (the container's start
/// timeout) ends this process sooner.
const OPEN_TIMEOUT: Duration = Duration::from_secs(600);

fn health(report: HealthReport) -> Answer {
    Answer::Health {
        healthy: report.healthy,
        message: report.message,
        micros: micros(report.duration),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn refusal(error: CallError) -> Refusal {
    match error {
        CallError::Failed(m) => Refusal::Failed(m),
        CallError::Panicked(m) => Refusal::Panicked(m),
        CallError::BadConfig(m) => Refusal::BadConfig(m),
        CallError::Timeout { call, timeout } => Refusal::Timeout {
            call: call.to_owned(),
            ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        },
        CallError::Stuck => Refusal::Stuck,
        CallError::NotConstructed => Refusal::NotConstructed,
        CallError::Ended(m) => Refusal::Failed(m),
    }
}
