//! The export macro and the plugin-side glue it expands to.
//!
//! The glue owns every boundary detail: it catches every panic (config check, constructor,
//! `start`, `stop`, `health`, `Drop`) and turns it into an [`FfiError`] (or an
//! [`FfiConfigError`]) carrying the panic message, because a panic that reaches an
//! abi_stable shim ends the whole process.

use std::any::Any;
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSome, RStr, RString};
use serde::de::DeserializeOwned;

use crate::container::{Container, Health};
use crate::context::Context;
use crate::ffi::{
    FfiConfigError, FfiContainer, FfiContainer_TO, FfiContainerBox, FfiError, FfiErrorKind,
    FfiHandover, FfiHealth, FfiHealthStatus, FfiHostArc,
};

/// Exports a container plugin from a `cdylib` crate. Write it once, at the crate root.
///
/// - `name`: the plugin's name (`a-z`, `0-9`, `-`, `_`; at most 64 bytes). Config files
///   refer to the plugin by it, and a container with no config is named after it.
/// - `version`: the plugin's own version, usually `env!("CARGO_PKG_VERSION")`.
/// - `constructor`: a function `fn(Config, Context) -> Result<T, E>` where `Config`
///   implements `serde::Deserialize`, `T` implements [`Container`] and `E: Display`.
///   `Config` is built from the container's `config` table in the host's config file
///   (an empty table when there is none). The host can also check a config against
///   `Config` without constructing anything (interface 1.2): only `Config`'s `Deserialize`
///   runs then, so keep checks that need no resources in it (`deny_unknown_fields`,
///   `deserialize_with`, `try_from`) and the rest in the constructor.
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

            extern "C" fn __balut_check_config(
                config_json: $crate::__private::RStr<'_>,
            ) -> $crate::__private::RResult<(), $crate::__private::FfiConfigError> {
                // The constructor is passed only to name the config type; it is not called.
                $crate::__private::check_config($constructor, config_json)
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
                        check_config: __balut_check_config,
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
        let config: C = parse_config(config_json.as_str())
            .map_err(|refused| FfiError::new(FfiErrorKind::BadConfig, refused.to_string()))?;
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

/// The config-check glue: deserialize the config into the constructor's `Config` type and
/// say where and why it does not fit. `constructor` is taken only to infer `C`; it is
/// dropped, never called.
pub fn check_config<C, T, E, F>(
    constructor: F,
    config_json: RStr<'_>,
) -> RResult<(), FfiConfigError>
where
    C: DeserializeOwned,
    T: Container,
    E: Display,
    F: FnOnce(C, Context) -> Result<T, E>,
{
    drop(constructor);
    check_config_of::<C>(config_json)
}

/// The config check for the config type `C` (what [`check_config`] runs).
pub(crate) fn check_config_of<C: DeserializeOwned>(
    config_json: RStr<'_>,
) -> RResult<(), FfiConfigError> {
    install_panic_hook();
    let checked = catch_unwind(AssertUnwindSafe(move || {
        parse_config::<C>(config_json.as_str()).map(drop)
    }));
    match checked {
        Ok(Ok(())) => ROk(()),
        Ok(Err(refused)) => RErr(FfiConfigError::new(refused.path, refused.message)),
        Err(payload) => RErr(FfiConfigError::new("", panicked(payload).message)),
    }
}

/// Why a config did not deserialize: where (a dotted key path, empty for the root) and
/// serde's message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    path: String,
    message: String,
}

impl Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Deserializes `json` (the whole text: trailing characters are refused, as
/// `serde_json::from_str` does) into `C`, tracking the key path of an error.
fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, Refused> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let config = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path();
        Refused {
            // An empty path prints as "."; the root is "" at the boundary.
            path: if path.iter().next().is_none() {
                String::new()
            } else {
                path.to_string()
            },
            message: serde_message(e.inner()),
        }
    })?;
    deserializer.end().map_err(|e| Refused {
        path: String::new(),
        message: serde_message(&e),
    })?;
    Ok(config)
}

/// serde's message without serde_json's " at line L column C": the host made the JSON from
/// its own config file, so a position in it means nothing to whoever reads the message.
fn serde_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    if error.line() == 0 {
        return full;
    }
    let position = format!(" at line {} column {}", error.line(), error.column());
    match full.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => full,
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

    fn handover(&mut self) -> ROption<RResult<FfiHandover, FfiError>> {
        match self.call(|c| Ok(c.handover())) {
            ROk(Some(state)) => RSome(ROk(FfiHandover {
                version: state.version,
                bytes: state.bytes.into(),
            })),
            ROk(None) => RNone,
            RErr(e) => RSome(RErr(e)),
        }
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

#[cfg(test)]
mod tests {
    use abi_stable::std_types::RArc;
    use serde::Deserialize;

    use super::*;
    use crate::ffi::{FfiHost, FfiHost_TO, FfiLevel};

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only deserialized
    #[serde(deny_unknown_fields)]
    struct Server {
        port: u16,
        bind: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only deserialized
    struct Nested {
        limits: Limits,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only deserialized
    struct Limits {
        max: u32,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only deserialized
    struct Item {
        name: String,
    }

    /// A config type whose `Deserialize` panics.
    #[derive(Debug)]
    struct Explosive;

    impl<'de> Deserialize<'de> for Explosive {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("boom in Deserialize");
        }
    }

    struct Idle;

    impl Container for Idle {
        fn start(&mut self) -> Result<(), crate::Error> {
            Ok(())
        }
    }

    fn server(_: Server, _: Context) -> Result<Idle, crate::Error> {
        Ok(Idle)
    }

    fn nested(_: Nested, _: Context) -> Result<Idle, crate::Error> {
        Ok(Idle)
    }

    fn explosive(_: Explosive, _: Context) -> Result<Idle, crate::Error> {
        Ok(Idle)
    }

    fn never_called(_: Server, _: Context) -> Result<Idle, crate::Error> {
        panic!("the config check called the constructor");
    }

    /// `check_config`'s answer as `Ok(())` or `Err((path, message))`.
    fn check<C, E>(
        constructor: impl FnOnce(C, Context) -> Result<Idle, E>,
        json: &str,
    ) -> Result<(), (String, String)>
    where
        C: DeserializeOwned,
        E: Display,
    {
        check_config(constructor, RStr::from_str(json))
            .into_result()
            .map_err(|e| (e.path.into_string(), e.message.into_string()))
    }

    #[derive(Clone)]
    struct NoHost;

    impl FfiHost for NoHost {
        fn log(
            &self,
            _: FfiLevel,
            _: RStr<'_>,
            _: abi_stable::std_types::RSlice<'_, abi_stable::std_types::Tuple2<RStr<'_>, RStr<'_>>>,
        ) {
        }

        fn stop_requested(&self) -> bool {
            false
        }
    }

    fn construct<C, E>(
        constructor: impl FnOnce(C, Context) -> Result<Idle, E>,
        json: &str,
    ) -> Result<(), FfiError>
    where
        C: DeserializeOwned,
        E: Display,
    {
        let host = FfiHost_TO::from_ptr(RArc::new(NoHost), TD_Opaque);
        new_container(
            constructor,
            RStr::from_str("test"),
            RStr::from_str(json),
            host,
        )
        .into_result()
        .map(|mut container| {
            let _ = container.dispose();
        })
    }

    /// What `export_plugin!` expands to, in this test binary.
    mod exported {
        crate::export_plugin!(
            name: "glue-test",
            version: "0.1.0",
            constructor: super::server,
            requires: ["db"]
        );
    }

    #[test]
    fn the_exported_root_module_checks_configs() {
        let module = exported::_1as_0lib_1header_0root_bmodule_bloader
            .init_root_module::<crate::ffi::PluginModRef>()
            .expect("the root module of this very crate");
        let check = module
            .check_config()
            .expect("a 1.2 root module has check_config");
        assert!(check(RStr::from_str(r#"{"port": 1}"#)).is_ok());
        let refused = check(RStr::from_str(r#"{"port": 1, "colour": 2}"#))
            .into_result()
            .expect_err("colour is not a field");
        assert_eq!(refused.path.as_str(), "colour");
        let requires = module.default_requires().expect("a 1.1 field");
        assert_eq!(requires.len(), 1);
        assert_eq!(requires[0].as_str(), "db");
    }

    #[test]
    fn check_config_accepts_a_good_config() {
        assert_eq!(check(server, r#"{"port": 80}"#), Ok(()));
        assert_eq!(check(server, r#"{"port": 80, "bind": "::1"}"#), Ok(()));
        assert_eq!(
            check(
                nested,
                r#"{"limits": {"max": 3}, "items": [{"name": "a"}]}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn check_config_does_not_call_the_constructor() {
        assert_eq!(check(never_called, r#"{"port": 80}"#), Ok(()));
    }

    #[test]
    fn check_config_names_an_unknown_field() {
        assert_eq!(
            check(server, r#"{"port": 80, "maxkeys": 5}"#),
            Err((
                "maxkeys".into(),
                "unknown field `maxkeys`, expected `port` or `bind`".into()
            ))
        );
    }

    #[test]
    fn check_config_names_nested_paths() {
        assert_eq!(
            check(nested, r#"{"limits": {"max": "many"}}"#),
            Err((
                "limits.max".into(),
                r#"invalid type: string "many", expected u32"#.into()
            ))
        );
        assert_eq!(
            check(
                nested,
                r#"{"limits": {"max": 1}, "items": [{"name": "a"}, {"name": "b"}, {"name": 5}]}"#
            ),
            Err((
                "items[2].name".into(),
                "invalid type: integer `5`, expected a string".into()
            ))
        );
        // A missing field is the struct's fault, so the path ends at the struct.
        assert_eq!(
            check(nested, r#"{"limits": {"max": 1}, "items": [{}]}"#),
            Err(("items[0]".into(), "missing field `name`".into()))
        );
    }

    #[test]
    fn check_config_refuses_at_the_root_with_an_empty_path() {
        assert_eq!(
            check(server, "true"),
            Err((
                String::new(),
                "invalid type: boolean `true`, expected struct Server".into()
            ))
        );
        assert_eq!(
            check(server, r#"{"port": 80} x"#),
            Err((String::new(), "trailing characters".into()))
        );
    }

    #[test]
    fn check_config_reports_a_panicking_deserialize() {
        assert_eq!(
            check(explosive, "{}"),
            Err((String::new(), "panicked: boom in Deserialize".into()))
        );
    }

    #[test]
    fn new_container_reports_bad_config_with_its_path() {
        let error = construct(nested, r#"{"limits": {"max": -1}}"#)
            .expect_err("a negative max does not fit a u32");
        assert_eq!(error.kind, FfiErrorKind::BadConfig);
        assert_eq!(
            error.message.as_str(),
            "limits.max: invalid value: integer `-1`, expected u32"
        );
        let error = construct(server, "7").expect_err("a number is not a struct");
        assert_eq!(error.kind, FfiErrorKind::BadConfig);
        assert_eq!(
            error.message.as_str(),
            "invalid type: integer `7`, expected struct Server"
        );
        assert!(construct(server, r#"{"port": 80}"#).is_ok());
    }
}
