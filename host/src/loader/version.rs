//! Plugin interface versions: the host's own, which plugins it loads, and what a plugin
//! file says about itself.

use std::fmt;

use balut_plugin_api::__private::PluginDeclaration;
use balut_plugin_api::{INTERFACE_MAJOR, INTERFACE_MINOR};

/// A plugin interface version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceVersion {
    pub major: u32,
    pub minor: u32,
}

impl InterfaceVersion {
    /// The interface this host was built with.
    pub const HOST: Self = Self {
        major: INTERFACE_MAJOR,
        minor: INTERFACE_MINOR,
    };

    /// Whether the host can load a plugin built for `self`. A newer minor would carry
    /// prefix fields abi_stable must reconcile, and such a library can never be unloaded
    /// safely, so it is refused like a different major.
    #[allow(clippy::absurd_extreme_comparisons)] // the host's minor is 0 today
    pub fn loadable_by_host(self) -> bool {
        self.major == Self::HOST.major && self.minor <= Self::HOST.minor
    }
}

impl fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// `balut --version`'s text: the crate version and the plugin interfaces it loads.
pub fn version_text() -> String {
    let host = InterfaceVersion::HOST;
    format!(
        "{} (plugin interface {host}; loads plugins built for {}.0 to {host})",
        env!("CARGO_PKG_VERSION"),
        host.major
    )
}

/// What a plugin file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub interface: InterfaceVersion,
}

impl From<&PluginDeclaration> for PluginInfo {
    fn from(decl: &PluginDeclaration) -> Self {
        Self {
            name: decl.name().to_owned(),
            version: decl.version().to_owned(),
            interface: InterfaceVersion {
                major: decl.interface_major,
                minor: decl.interface_minor,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_gate() {
        let v = |major, minor| InterfaceVersion { major, minor };
        assert!(InterfaceVersion::HOST.loadable_by_host());
        assert!(!v(INTERFACE_MAJOR + 1, 0).loadable_by_host());
        assert!(!v(INTERFACE_MAJOR, INTERFACE_MINOR + 1).loadable_by_host());
        assert!(INTERFACE_MAJOR == 0 || !v(INTERFACE_MAJOR - 1, 0).loadable_by_host());
    }
}
