//! What the host offers each container through its `Context`: logging into the host's
//! `tracing` output, tagged with the container's name, the stop-requested flag, and the
//! notices a container sends of its own accord (readiness, failure, finished).
//!
//! These methods are called from plugin threads through an abi_stable vtable; a panic here
//! would end the process (abi_stable aborts on unwinding), so nothing in them may panic.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::UnboundedSender;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RStr, RString, Tuple2};
use balut_plugin_api::ffi::{
    FfiHandover, FfiHost, FfiHost_TO, FfiHostArc, FfiLevel, FfiListener, FfiListenerKind,
};

mod lines;

pub use lines::MAX_LOG_BYTES;
pub(crate) use lines::clip;
use lines::{format_fields, json_fields, shows};

use crate::logs::ContainerLog;
use crate::sockets::{Address, Listeners};

/// What a container tells the host of its own accord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Interface 1.1: `Context::set_ready`.
    Ready(bool),
    /// Interface 1.1: `Context::report_failure`, with the reason.
    Failed(String),
    /// Interface 1.2: `Context::report_finished`, with the plugin's message: the container
    /// has finished its work (a clean end, not a failure).
    Finished(String),
    /// The container's process ended on its own (process isolation): the reason, such as
    /// `killed by signal SIGSEGV`.
    Ended(String),
}

/// What one instance reported and the supervisor has not handled yet: the latest
/// readiness, the first failure, the first finish. A plugin that reports in a tight loop
/// overwrites, it never queues.
#[derive(Debug, Default)]
struct Mailbox {
    /// Whether a wake-up for this instance is in the supervisor's channel.
    queued: AtomicBool,
    readiness_changed: AtomicBool,
    failure: Mutex<Option<String>>,
    finished: Mutex<Option<String>>,
    ended: Mutex<Option<String>>,
}

/// A wake-up for the supervisor: instance `instance` of `container` has notices. At most
/// one per instance is ever in the channel, so it holds at most one entry per live
/// instance, however often a plugin reports.
#[derive(Debug, Clone)]
pub struct NoticeFrom {
    pub container: Arc<str>,
    pub instance: u64,
    mailbox: Arc<Mailbox>,
    readiness: Arc<AtomicU8>,
}

impl NoticeFrom {
    /// Takes the notices reported since the last take: readiness first, then a failure,
    /// then a finish.
    pub fn take(&self) -> Vec<Notice> {
        self.mailbox.queued.store(false, Ordering::SeqCst);
        let mut notices = Vec::new();
        if self.mailbox.readiness_changed.swap(false, Ordering::SeqCst) {
            if let Some(ready) = readiness_of(&self.readiness) {
                notices.push(Notice::Ready(ready));
            }
        }
        let take = |slot: &Mutex<Option<String>>| {
            slot.lock().unwrap_or_else(PoisonError::into_inner).take()
        };
        if let Some(reason) = take(&self.mailbox.failure) {
            notices.push(Notice::Failed(reason));
        }
        if let Some(message) = take(&self.mailbox.finished) {
            notices.push(Notice::Finished(message));
        }
        if let Some(reason) = take(&self.mailbox.ended) {
            notices.push(Notice::Ended(reason));
        }
        notices
    }
}

const READINESS_UNSET: u8 = 0;
const READINESS_READY: u8 = 1;
const READINESS_NOT_READY: u8 = 2;

fn readiness_of(value: &AtomicU8) -> Option<bool> {
    match value.load(Ordering::SeqCst) {
        READINESS_READY => Some(true),
        READINESS_NOT_READY => Some(false),
        _ => None,
    }
}

/// State one instance hands the next on a hot reload (interface 1.3): the plugin's bytes
/// and its version number for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub version: u32,
    pub bytes: Vec<u8>,
}

/// The host's side of one container's `Context`.
#[derive(Clone)]
pub struct HostServices {
    container: Arc<str>,
    generation: u64,
    instance: u64,
    stop_requested: Arc<AtomicBool>,
    readiness: Arc<AtomicU8>,
    mailbox: Arc<Mailbox>,
    wake: UnboundedSender<NoticeFrom>,
    /// The sockets the host holds for the container.
    listeners: Arc<Listeners>,
    /// What the previous instance handed over, until the plugin takes it.
    handover: Arc<Mutex<Option<Handover>>>,
    /// Where the container's recent lines are kept for `balut logs` (none in benchmarks).
    recent: Option<Arc<ContainerLog>>,
}

impl HostServices {
    pub fn new(
        container: &str,
        generation: u64,
        instance: u64,
        wake: UnboundedSender<NoticeFrom>,
    ) -> Self {
        Self {
            container: container.into(),
            generation,
            instance,
            stop_requested: Arc::default(),
            readiness: Arc::new(AtomicU8::new(READINESS_UNSET)),
            mailbox: Arc::default(),
            wake,
            listeners: Arc::default(),
            handover: Arc::default(),
            recent: None,
        }
    }

    /// With the buffer that keeps the container's recent log lines.
    pub(crate) fn with_recent_log(mut self, recent: Arc<ContainerLog>) -> Self {
        self.recent = Some(recent);
        self
    }

    /// With the sockets the host holds for the container.
    pub fn with_listeners(mut self, listeners: Listeners) -> Self {
        self.listeners = Arc::new(listeners);
        self
    }

    /// With the state the previous instance handed over.
    pub fn with_handover(self, handover: Option<Handover>) -> Self {
        *self.handover.lock().unwrap_or_else(PoisonError::into_inner) = handover;
        self
    }

    /// The sockets the host holds for the container.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Takes the handed-over state (once).
    pub fn take_handover(&self) -> Option<Handover> {
        self.handover
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// What the container last reported about its readiness, if anything.
    pub fn reported_readiness(&self) -> Option<bool> {
        readiness_of(&self.readiness)
    }

    /// The container reports itself ready or not ready.
    pub fn report_ready(&self, ready: bool) {
        let value = if ready {
            READINESS_READY
        } else {
            READINESS_NOT_READY
        };
        self.readiness.store(value, Ordering::SeqCst);
        self.mailbox.readiness_changed.store(true, Ordering::SeqCst);
        self.wake_supervisor();
    }

    /// The container reports a failure (the first one counts).
    pub fn report_failure(&self, reason: &str) {
        self.fill(&self.mailbox.failure, reason);
    }

    /// The container reports that it finished its work.
    pub fn report_finished(&self, message: &str) {
        self.fill(&self.mailbox.finished, message);
    }

    /// The container's process ended without being asked to (process isolation).
    pub fn report_ended(&self, reason: &str) {
        self.fill(&self.mailbox.ended, reason);
    }

    /// Whether a stop was requested (`Context::stop_requested`).
    pub fn is_stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    /// Emits one of the plugin's log lines, tagged with the container and generation, and
    /// keeps it among the container's recent lines when the host's log shows its level. The
    /// caller has cut the message and each field value with [`clip`].
    pub fn log<'a>(
        &self,
        level: FfiLevel,
        message: &str,
        fields: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) {
        if !shows(level) {
            return;
        }
        let container = &*self.container;
        let generation = self.generation;
        let fields: Vec<(&str, &str)> = fields.collect();
        // Text: `message key=value ...`; JSON: the fields as keys of the line (logging.rs).
        let (text_fields, json_fields) = if crate::logging::is_json() {
            (String::new(), json_fields(fields.iter().copied()))
        } else {
            (format_fields(fields.iter().copied()), None)
        };
        macro_rules! emit {
            ($level:expr, $name:literal) => {{
                if let Some(recent) = &self.recent {
                    if tracing::enabled!(target: "plugin", $level) {
                        recent.push($name, message, fields.iter().copied());
                    }
                }
                match &json_fields {
                    Some(plugin_fields) => tracing::event!(
                        target: "plugin", $level,
                        container = %container, generation, plugin_fields = %plugin_fields,
                        "{message}"
                    ),
                    None => tracing::event!(
                        target: "plugin", $level,
                        container = %container, generation,
                        "{message}{text_fields}"
                    ),
                }
            }};
        }
        match level {
            FfiLevel::Error => emit!(tracing::Level::ERROR, "error"),
            FfiLevel::Warn => emit!(tracing::Level::WARN, "warn"),
            FfiLevel::Info => emit!(tracing::Level::INFO, "info"),
            FfiLevel::Debug => emit!(tracing::Level::DEBUG, "debug"),
            FfiLevel::Trace => emit!(tracing::Level::TRACE, "trace"),
        }
    }

    fn fill(&self, slot: &Mutex<Option<String>>, text: &str) {
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| clip(text).into_owned());
        self.wake_supervisor();
    }

    fn wake_supervisor(&self) {
        if self.mailbox.queued.swap(true, Ordering::SeqCst) {
            return; // A wake-up is already on its way; it will see this too.
        }
        // The receiver is gone only while the host shuts down; nothing to tell then.
        let _ = self.wake.send(NoticeFrom {
            container: self.container.clone(),
            instance: self.instance,
            mailbox: self.mailbox.clone(),
            readiness: self.readiness.clone(),
        });
    }

    /// Tells the plugin (through `Context::stop_requested`) that a stop is coming.
    pub fn request_stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
    }

    /// The handle passed across the boundary; its vtable lives in the host.
    pub fn to_ffi(&self) -> FfiHostArc {
        FfiHost_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }
}

impl FfiHost for HostServices {
    fn log(
        &self,
        level: FfiLevel,
        message: RStr<'_>,
        fields: RSlice<'_, Tuple2<RStr<'_>, RStr<'_>>>,
    ) {
        if !shows(level) {
            return;
        }
        let clipped: Vec<(&str, Cow<'_, str>)> = fields
            .as_slice()
            .iter()
            .map(|Tuple2(key, value)| (key.as_str(), clip(value.as_str())))
            .collect();
        let fields = clipped.iter().map(|(key, value)| (*key, value.as_ref()));
        HostServices::log(self, level, &clip(message.as_str()), fields);
    }

    fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    fn set_ready(&self, ready: bool) {
        self.report_ready(ready);
    }

    fn report_failure(&self, reason: RStr<'_>) {
        HostServices::report_failure(self, reason.as_str());
    }

    fn report_finished(&self, message: RStr<'_>) {
        HostServices::report_finished(self, message.as_str());
    }

    fn listener(&self, name: RStr<'_>) -> RResult<FfiListener, RString> {
        let result = lend_listener(&self.listeners, name.as_str());
        result.map_err(RString::from).into()
    }

    fn take_handover(&self) -> ROption<FfiHandover> {
        HostServices::take_handover(self)
            .map(|h| FfiHandover {
                version: h.version,
                bytes: h.bytes.into(),
            })
            .into()
    }
}

/// A new descriptor of the held socket `name`, owned by the caller (the plugin), or why
/// there is none. The host keeps its own.
pub fn lend_listener(listeners: &Listeners, name: &str) -> Result<FfiListener, String> {
    use std::os::fd::IntoRawFd;
    let Some(held) = listeners.get(name) else {
        let names: Vec<&str> = listeners.keys().map(String::as_str).collect();
        return Err(if names.is_empty() {
            format!(
                "no socket named `{name}`: the host holds none for this container (its config's `listen` table)"
            )
        } else {
            format!(
                "no socket named `{name}`: the host holds {} for this container",
                names.join(", ")
            )
        });
    };
    let fd = held
        .fd
        .try_clone()
        .map_err(|e| format!("duplicating the socket `{name}` ({}): {e}", held.address))?;
    let kind = match held.address {
        Address::Tcp(_) => FfiListenerKind::Tcp,
        Address::Unix(_) => FfiListenerKind::Unix,
    };
    Ok(FfiListener {
        kind,
        fd: fd.into_raw_fd(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_key_value_and_quoted_when_needed() {
        let fields = [
            Tuple2(RStr::from_str("port"), RStr::from_str("8080")),
            Tuple2(RStr::from_str("path"), RStr::from_str("/a b")),
            Tuple2(RStr::from_str("empty"), RStr::from_str("")),
        ];
        assert_eq!(
            format_fields(fields.iter().map(|Tuple2(k, v)| (k.as_str(), v.as_str()))),
            r#" port=8080 path="/a b" empty="""#
        );
    }

    #[test]
    fn long_messages_are_cut_with_a_marker() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_LOG_BYTES); // two bytes each
        let clipped = clip(&long);
        assert!(clipped.len() < MAX_LOG_BYTES + 40, "{}", clipped.len());
        assert!(
            clipped.ends_with(&format!("… (truncated {} bytes)", MAX_LOG_BYTES)),
            "{} bytes, not ending in the marker",
            clipped.len()
        );
    }

    #[test]
    fn stop_flag_is_shared_with_the_ffi_handle() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let services = HostServices::new("web", 1, 7, tx);
        let ffi = services.to_ffi();
        assert!(!ffi.stop_requested());
        services.request_stop();
        assert!(ffi.stop_requested());
    }

    #[test]
    fn a_finished_container_becomes_a_notice() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let services = HostServices::new("job", 1, 3, tx);
        services
            .to_ffi()
            .report_finished(RStr::from_str("imported 12 rows"));
        let wake = rx.try_recv().expect("a wake-up");
        assert_eq!((&*wake.container, wake.instance), ("job", 3));
        assert_eq!(wake.take(), [Notice::Finished("imported 12 rows".into())]);
    }

    #[test]
    fn notices_coalesce_into_one_wake_up_per_instance() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let services = HostServices::new("web", 1, 7, tx);
        let ffi = services.to_ffi();
        assert_eq!(services.reported_readiness(), None);
        // A plugin reporting in a tight loop fills no queue.
        for i in 0..10_000 {
            ffi.set_ready(i % 2 == 0);
        }
        ffi.set_ready(false);
        ffi.report_failure(RStr::from_str("disk full"));
        ffi.report_failure(RStr::from_str("and more"));
        assert_eq!(services.reported_readiness(), Some(false));
        let wake = rx.try_recv().expect("a wake-up");
        assert!(rx.try_recv().is_err(), "only one wake-up is queued");
        assert_eq!(
            wake.take(),
            [Notice::Ready(false), Notice::Failed("disk full".into())]
        );
        // Taken: the next report wakes the supervisor again.
        ffi.set_ready(true);
        assert_eq!(
            rx.try_recv().expect("a new wake-up").take(),
            [Notice::Ready(true)]
        );
    }
}
