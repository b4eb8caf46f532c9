//! The export macro and the plugin-side glue it expands to.
//!
//! The glue owns every boundary detail: it catches every panic (constructor, `start`,
//! `stop`, `health`, `Drop`) and turns it into an [`FfiError`] carrying the panic message,
//! because a panic that reaches an abi_stable shim ends the whole process.

use std::any::Any;
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSome, RStr, RString};
use serde::de::DeserializeOwned;

use crate::container::{Container, Health};
use crate::context::Context;
use crate::ffi::{
    FfiContainer, FfiContainer_TO, FfiContainerBox, FfiError, FfiErrorKind, FfiHealth,
    FfiHealthStatus, FfiHostArc,
};

/// Exports a container plugin from a `cdylib` crate. Write it once, at the crate root.
///
/// - `name`: the plugin's name (`a-z`, `0-9`, `-`, `_`; at most 64 bytes). Config files
///   refer to the plugin by it, and a container with no config is named after it.
/// - `version`: the plugin's own version, usually `env!("CARGO_PKG_VERSION")`.
/// - `constructor`: a function `fn(Config, Context) -> Result<T, E>` where `Config`
///   implements `serde::Deserialize`, `T` implements [`Container`] and `E: Display`.
///   `Config` is built from the container's `config` table in the host's config file
///   (an empty table when there is none).
/// - `requires` (optional): names of containers an instance of this plugin requires when
///   its config does not say (`requires = [...]` in the host's config overrides it), e.g.
///   `requires: ["db"]`.
///
/// ```
/// use balut_plugin_api::{Container, Context, Error, export_plugin};
///
/// #[derive(serde::Deserialize)]
/// struct Config { greeting: Option<String> }
///
/// struct Hello { ctx: Context, greeting: String }
///
/// impl Hello {
///     fn new(config: Config, ctx: Context) -> Result<Self, Error> {
///         Ok(Self { ctx, greeting: config.greeting.unwrap_or_else(|| "hello".into()) })
///     }
/// }
///
/// impl Container for Hello {
///     fn start(&mut self) -> Result<(), Error> {
///         self.ctx.info(&self.greeting);
///         Ok(())
///     }
/// }
///
/// export_plugin!(name: "hello", version: "0.1.0", constructor: Hello::new);
/// ```
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        constructor: $constructor:expr
        $(, requires: [$($required:expr),* $(,)?])?
        $(,)?
    ) => {
        $crate::__export_plugin_with_interface!(
            interface: ($crate::INTERFACE_MAJOR, $crate::INTERFACE_MINOR),
            name: $name,
            version: $version,
            constructor: $constructor,
            requires: [$($($required),*)?]
        );
    };
}

/// Like [`export_plugin!`] but declaring an arbitrary interface version. Only for Balut's
/// own test fixtures (a plugin "from the future"); never use it in a real plugin.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin_with_interface {
    (
        interface: ($major:expr, $minor:expr),
        name: $name:expr,
        version: $version:expr,
        constructor: $constructor:expr
        $(, requires: [$($required:expr),* $(,)?])?
    ) => {
        /// Read by the host from the file's bytes before it opens the library.
        #[unsafe(no_mangle)]
        pub static BALUT_PLUGIN_DECLARATION: $crate::__private::PluginDeclaration =
            $crate::__private::PluginDeclaration::new($name, $version, $major, $minor);

        /// abi_stable's library header, under the symbol name abi_stable looks for
        /// (`abi_stable::library::ROOT_MODULE_LOADER_NAME`; a test in balut-plugin-api keeps
        /// the two equal). Equivalent to `#[abi_stable::export_root_module]`.
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn __balut_new_container(
                name: $crate::__private::RStr<'_>,
                config_json: $crate::__private::RStr<'_>,
                host: $crate::__private::FfiHostArc,
            ) -> $crate::__private::RResult<
                $crate::__private::FfiContainerBox,
                $crate::__private::FfiError,
            > {
                $crate::__private::new_container($constructor, name, config_json, host)
            }

            fn __balut_root_module() -> $crate::__private::PluginModRef {
                // A static module: nothing is allocated per load.
                const MODULE: &$crate::__private::abi_stable::prefix_type::WithMetadata<
                    $crate::__private::PluginMod,
                > = &$crate::__private::abi_stable::prefix_type::WithMetadata::new(
                    $crate::__private::PluginMod {
                        new_container: __balut_new_container,
                        default_requires: $crate::__private::RSlice::from_slice(&[
                            $($($crate::__private::RStr::from_str($required)),*)?
                        ]),
                    },
                );
                $crate::__private::PluginModRef(MODULE.static_as_prefix())
            }

            extern "C" fn __balut_erased_root_module()
            -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    __balut_root_module,
                )
            }

            // SAFETY: the constructor returns a `PluginModRef` erased by abi_stable's own
            // loader shim, exactly as `#[export_root_module]` expands.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::__private::PluginModRef,
                >(
                    __balut_erased_root_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The constructor glue: parse the config, build the container, box it for the host.
pub fn new_container<C, T, E, F>(
    constructor: F,
    name: RStr<'_>,
    config_json: RStr<'_>,
    host: FfiHostArc,
) -> RResult<FfiContainerBox, FfiError>
where
    C: DeserializeOwned,
    T: Container,
    E: Display,
    F: FnOnce(C, Context) -> Result<T, E>,
{
    install_panic_hook();
    let name = name.as_str().to_owned();
    let built = catch_unwind(AssertUnwindSafe(move || {
        let config: C = serde_json::from_str(config_json.as_str())
            .map_err(|e| FfiError::new(FfiErrorKind::BadConfig, format!("invalid config: {e}")))?;
        let container = constructor(config, Context::new(name, host))
            .map_err(|e| FfiError::new(FfiErrorKind::Failed, e.to_string()))?;
        Ok(FfiContainer_TO::from_value(
            Guarded {
                inner: Some(container),
            },
            TD_Opaque,
        ))
    }));
    match built {
        Ok(Ok(boxed)) => ROk(boxed),
        Ok(Err(error)) => RErr(error),
        Err(payload) => RErr(panicked(payload)),
    }
}

/// Replaces this library's panic hook (each plugin has its own copy of std) with one that
/// prints a single line and never a backtrace: std's backtrace printer maps the library's
/// file for symbols and keeps it mapped after unload. The panic message also reaches the
/// host as the call's error.
fn install_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "balut plugin: thread '{}' panicked{location}: {}",
                thread.name().unwrap_or("<unnamed>"),
                panic_message(info.payload())
            );
        }));
    });
}

/// Wraps an author's container so no panic escapes any call.
struct Guarded<T: Container> {
    inner: Option<T>,
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

fn panicked(payload: Box<dyn Any + Send>) -> FfiError {
    let message = panic_message(&*payload);
    // Dropping the payload could itself panic; keep it from unwinding out of here.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    FfiError::new(FfiErrorKind::Panicked, format!("panicked: {message}"))
}

impl<T: Container> Guarded<T> {
    fn call<R>(&mut self, f: impl FnOnce(&mut T) -> Result<R, FfiError>) -> RResult<R, FfiError> {
        let Some(inner) = self.inner.as_mut() else {
            return RErr(FfiError::new(
                FfiErrorKind::Disposed,
                "container was disposed",
            ));
        };
        match catch_unwind(AssertUnwindSafe(move || f(inner))) {
            Ok(result) => result.into(),
            Err(payload) => RErr(panicked(payload)),
        }
    }
}

fn to_ffi(health: Health) -> FfiHealth {
    match health {
        Health::Healthy => FfiHealth {
            status: FfiHealthStatus::Healthy,
            message: RString::new(),
        },
        Health::Unhealthy(reason) => FfiHealth {
            status: FfiHealthStatus::Unhealthy,
            message: reason.into(),
        },
    }
}

fn failed(error: crate::Error) -> FfiError {
    FfiError::new(FfiErrorKind::Failed, error.message())
}

impl<T: Container> FfiContainer for Guarded<T> {
    fn start(&mut self) -> RResult<(), FfiError> {
        self.call(|c| c.start().map_err(failed))
    }

    fn stop(&mut self) -> RResult<(), FfiError> {
        self.call(|c| c.stop().map_err(failed))
    }

    fn health(&mut self) -> RResult<FfiHealth, FfiError> {
        self.call(|c| Ok(to_ffi(c.health())))
    }

    fn ready(&mut self) -> ROption<RResult<FfiHealth, FfiError>> {
        RSome(self.call(|c| Ok(to_ffi(c.ready()))))
    }

    fn dispose(&mut self) -> RResult<(), FfiError> {
        let Some(inner) = self.inner.take() else {
            return ROk(());
        };
        match catch_unwind(AssertUnwindSafe(move || drop(inner))) {
            Ok(()) => ROk(()),
            Err(payload) => RErr(panicked(payload)),
        }
    }
}

impl<T: Container> Drop for Guarded<T> {
    fn drop(&mut self) {
        // The host always calls `dispose` first; this is the safety net if it could not.
        if let Some(inner) = self.inner.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(inner)));
        }
    }
}
