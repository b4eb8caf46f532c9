//! The isolated container's process: `balut __isolate NAME`. It opens the host's private
//! copy of one generation with the host's loader and checks, makes every call into the
//! container on a `loader::Worker` thread as the host would, and relays the plugin's
//! `Context` calls back over the socket. It exits at once (`_exit`, no finalizers) when
//! the host closes the socket or dies; plugin code that crashes or exits ends it alone,
//! with the crash line on stderr naming the container.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RSlice, RStr, Tuple2};
use balut_plugin_api::ffi::{FfiHost, FfiHost_TO, FfiLevel};

use super::protocol::{self, Answer, Call, PROTOCOL, Refusal, ToChild, ToHost, WRONG_PROTOCOL};
use super::spawn::CHILD_FD;
use crate::loader::{self, CallError, InterfaceVersion, LibraryFacts, PluginInfo, Worker};
use crate::services::clip;

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

/// The child's side of the plugin's `Context`: everything goes to the host.
#[derive(Clone)]
struct Relay {
    outbox: Arc<Outbox>,
    stop_requested: Arc<AtomicBool>,
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
}

/// `text` cut at [`MAX_LOG_BYTES`] with the host's marker, before it crosses the socket.
fn cut(text: &str) -> String {
    clip(text).into_owned()
}

/// The process's body. Returns only on a setup error; otherwise it ends with `_exit`.
pub fn main() -> ExitCode {
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
    let (calls, mut inbox) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("balut-isolate-read".into())
        .spawn(move || {
            while let Ok(Some(message)) = protocol::read_frame::<ToChild>(&mut reader) {
                if calls.send(message).is_err() {
                    break;
                }
            }
            // The host closed the socket (a finish) or died: nothing more to do.
            crate::exit::immediately(0);
        });
    if let Err(e) = spawned {
        eprintln!("balut __isolate: starting its reader: {e}");
        return ExitCode::from(1);
    }
    runtime.block_on(async move {
        let mut served = Served {
            outbox,
            stop_requested: Arc::new(AtomicBool::new(false)),
            worker: None,
        };
        while let Some(message) = inbox.recv().await {
            if let ToChild::Call {
                id,
                timeout_ms,
                call,
            } = message
            {
                served
                    .call(id, Duration::from_millis(timeout_ms), call)
                    .await;
            }
        }
    });
    crate::exit::immediately(0)
}

/// What the process serves: the worker of its one container instance, once opened.
struct Served {
    outbox: Arc<Outbox>,
    stop_requested: Arc<AtomicBool>,
    worker: Option<Arc<Worker>>,
}

/// How long a call may take here. The host keeps the real timeout (and ends this process
/// when a call overruns it); this one only keeps a forgotten call from waiting forever.
fn here(timeout: Duration) -> Duration {
    timeout.saturating_mul(2) + Duration::from_secs(5)
}

impl Served {
    async fn call(&mut self, id: u64, timeout: Duration, call: Call) {
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
            } => {
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
                let result = self.open(&container, facts).await;
                self.outbox.send(&ToHost::Reply { id, result });
                return;
            }
            other => other,
        };
        let Some(worker) = self.worker.clone() else {
            let result = Err(Refusal::NotOpened("the library is not open".into()));
            self.outbox.send(&ToHost::Reply { id, result });
            return;
        };
        if matches!(call, Call::Stop | Call::Dispose) {
            self.stop_requested.store(true, Ordering::SeqCst);
        }
        let relay = Relay {
            outbox: self.outbox.clone(),
            stop_requested: self.stop_requested.clone(),
        };
        let outbox = self.outbox.clone();
        // Each call waits for its answer on its own: a health check can be answered while a
        // slow one before it is still running, as on a thread in the host.
        tokio::spawn(async move {
            let timeout = here(timeout);
            let result = match call {
                Call::Construct {
                    container,
                    config_json,
                } => {
                    let host = FfiHost_TO::from_ptr(RArc::new(relay), TD_Opaque);
                    worker
                        .construct(&container, config_json, host, timeout)
                        .await
                        .map(|()| Answer::Done)
                }
                Call::Start => worker.start(timeout).await.map(|()| Answer::Done),
                Call::Stop => worker.stop(timeout).await.map(|()| Answer::Done),
                Call::Dispose => worker.dispose(timeout).await.map(|()| Answer::Done),
                Call::Health => worker.health(timeout).await.map(|h| Answer::Health {
                    healthy: h.healthy,
                    message: h.message,
                    micros: micros(h.duration),
                }),
                Call::Ready => worker.ready(timeout).await.map(|ready| match ready {
                    Some(h) => Answer::Health {
                        healthy: h.healthy,
                        message: h.message,
                        micros: micros(h.duration),
                    },
                    None => Answer::NoReadiness,
                }),
                Call::Open { .. } => Err(CallError::Failed("opened twice".into())),
            };
            outbox.send(&ToHost::Reply {
                id,
                result: result.map_err(refusal),
            });
        });
    }

    async fn open(&mut self, container: &str, facts: LibraryFacts) -> Result<Answer, Refusal> {
        if self.worker.is_some() {
            return Err(Refusal::Failed("the library is already open".into()));
        }
        let library = loader::open_existing(facts, Duration::from_secs(60))
            .await
            .map_err(|e| Refusal::NotOpened(e.to_string()))?;
        let worker = Worker::spawn(container, library)
            .map_err(|e| Refusal::NotOpened(format!("starting its thread: {e}")))?;
        self.worker = Some(Arc::new(worker));
        Ok(Answer::Done)
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
