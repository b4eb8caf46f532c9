//! What the host offers each container through its `Context`: logging into the host's
//! `tracing` output, tagged with the container's name, and the stop-requested flag.
//!
//! These methods are called from plugin threads through an abi_stable vtable; a panic here
//! would end the process (abi_stable aborts on unwinding), so nothing in them may panic.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RSlice, RStr, Tuple2};
use balut_plugin_api::ffi::{FfiHost, FfiHost_TO, FfiHostArc, FfiLevel};

/// The host's side of one container's `Context`.
#[derive(Clone)]
pub struct HostServices {
    container: Arc<str>,
    generation: u64,
    stop_requested: Arc<AtomicBool>,
}

impl HostServices {
    pub fn new(container: &str, generation: u64) -> Self {
        Self {
            container: container.into(),
            generation,
            stop_requested: Arc::default(),
        }
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

/// Formats plugin fields as ` key=value`, quoting values with spaces or quotes.
fn format_fields(fields: RSlice<'_, Tuple2<RStr<'_>, RStr<'_>>>) -> String {
    let mut out = String::new();
    for Tuple2(key, value) in fields.iter() {
        let value = value.as_str();
        if value.is_empty() || value.contains([' ', '"', '=']) {
            let _ = write!(out, " {}={value:?}", key.as_str());
        } else {
            let _ = write!(out, " {}={value}", key.as_str());
        }
    }
    out
}

impl FfiHost for HostServices {
    fn log(
        &self,
        level: FfiLevel,
        message: RStr<'_>,
        fields: RSlice<'_, Tuple2<RStr<'_>, RStr<'_>>>,
    ) {
        let container = &*self.container;
        let generation = self.generation;
        let fields = format_fields(fields);
        let message = message.as_str();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "plugin", $level, container = %container, generation, "{message}{fields}")
            };
        }
        match level {
            FfiLevel::Error => emit!(tracing::Level::ERROR),
            FfiLevel::Warn => emit!(tracing::Level::WARN),
            FfiLevel::Info => emit!(tracing::Level::INFO),
            FfiLevel::Debug => emit!(tracing::Level::DEBUG),
            FfiLevel::Trace => emit!(tracing::Level::TRACE),
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }
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
            format_fields(RSlice::from_slice(&fields)),
            r#" port=8080 path="/a b" empty="""#
        );
    }

    #[test]
    fn stop_flag_is_shared_with_the_ffi_handle() {
        let services = HostServices::new("web", 1);
        let ffi = services.to_ffi();
        assert!(!ffi.stop_requested());
        services.request_stop();
        assert!(ffi.stop_requested());
    }
}
