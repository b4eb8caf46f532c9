//! The plugin declaration: a frozen, pointer-free record every plugin library exports
//! under [`DECLARATION_SYMBOL`].
//!
//! The host reads it straight from the file's bytes, before the library is opened, so it can
//! name the plugin and refuse an incompatible interface without running any plugin code.
//! Its layout never changes; new metadata goes into the root module instead.

/// The exported symbol holding the [`PluginDeclaration`].
pub const DECLARATION_SYMBOL: &str = "BALUT_PLUGIN_DECLARATION";

/// The first bytes of every declaration.
pub const DECLARATION_MAGIC: [u8; 8] = *b"BALUTPLG";

/// Longest plugin name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest plugin version, in bytes.
pub const MAX_VERSION_LEN: usize = 32;

/// Size of the declaration in bytes.
pub const DECLARATION_SIZE: usize = std::mem::size_of::<PluginDeclaration>();

/// Frozen layout (120 bytes, little-endian on the platforms Balut supports):
///
/// | offset | field |
/// |---|---|
/// | 0 | `magic` |
/// | 8 | `interface_major` |
/// | 12 | `interface_minor` |
/// | 16 | `name_len` |
/// | 20 | `name` |
/// | 84 | `version_len` |
/// | 88 | `version` |
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginDeclaration {
    pub magic: [u8; 8],
    pub interface_major: u32,
    pub interface_minor: u32,
    pub name_len: u32,
    pub name: [u8; MAX_NAME_LEN],
    pub version_len: u32,
    pub version: [u8; MAX_VERSION_LEN],
}

const _: () = assert!(DECLARATION_SIZE == 120);

impl PluginDeclaration {
    /// Builds a declaration at compile time. A name that is empty, too long or not made of
    /// `a-z`, `0-9`, `-` and `_`, or a version that is empty or too long, fails the build.
    pub const fn new(
        name: &str,
        version: &str,
        interface_major: u32,
        interface_minor: u32,
    ) -> Self {
        let name = name.as_bytes();
        let version = version.as_bytes();
        assert!(
            !name.is_empty() && name.len() <= MAX_NAME_LEN,
            "plugin name must be 1 to 64 bytes"
        );
        assert!(
            !version.is_empty() && version.len() <= MAX_VERSION_LEN,
            "plugin version must be 1 to 32 bytes"
        );
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let mut i = 0;
        while i < name.len() {
            let c = name[i];
            assert!(
                is_name_byte(c),
                "plugin name may only contain a-z, 0-9, '-' and '_'"
            );
            name_buf[i] = c;
            i += 1;
        }
        let mut version_buf = [0u8; MAX_VERSION_LEN];
        let mut i = 0;
        while i < version.len() {
            version_buf[i] = version[i];
            i += 1;
        }
        Self {
            magic: DECLARATION_MAGIC,
            interface_major,
            interface_minor,
            name_len: name.len() as u32,
            name: name_buf,
            version_len: version.len() as u32,
            version: version_buf,
        }
    }

    /// Parses a declaration from its little-endian bytes (as found in a library file).
    pub fn from_le_bytes(bytes: &[u8]) -> Result<Self, DeclarationError> {
        let bytes: &[u8; DECLARATION_SIZE] = bytes
            .get(..DECLARATION_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(DeclarationError::Short)?;
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut decl = Self {
            magic: [0; 8],
            interface_major: u32_at(8),
            interface_minor: u32_at(12),
            name_len: u32_at(16),
            name: [0; MAX_NAME_LEN],
            version_len: u32_at(84),
            version: [0; MAX_VERSION_LEN],
        };
        decl.magic.copy_from_slice(&bytes[0..8]);
        decl.name.copy_from_slice(&bytes[20..84]);
        decl.version.copy_from_slice(&bytes[88..120]);
        if decl.magic != DECLARATION_MAGIC {
            return Err(DeclarationError::BadMagic);
        }
        if decl.name_len as usize > MAX_NAME_LEN || decl.version_len as usize > MAX_VERSION_LEN {
            return Err(DeclarationError::BadLength);
        }
        if std::str::from_utf8(decl.name_bytes()).is_err()
            || std::str::from_utf8(decl.version_bytes()).is_err()
        {
            return Err(DeclarationError::NotUtf8);
        }
        // The rules `new` enforces at build time, for files made some other way: the name
        // becomes a container name, a log field and part of URLs.
        if decl.name_bytes().is_empty() || !decl.name_bytes().iter().all(|&c| is_name_byte(c)) {
            return Err(DeclarationError::BadName);
        }
        if decl.version_bytes().is_empty() || decl.version().chars().any(char::is_control) {
            return Err(DeclarationError::BadVersion);
        }
        Ok(decl)
    }

    fn name_bytes(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(MAX_NAME_LEN)]
    }

    fn version_bytes(&self) -> &[u8] {
        &self.version[..(self.version_len as usize).min(MAX_VERSION_LEN)]
    }

    /// The plugin's name (empty if the declaration was not valid UTF-8).
    pub fn name(&self) -> &str {
        std::str::from_utf8(self.name_bytes()).unwrap_or_default()
    }

    /// The plugin's own version (empty if the declaration was not valid UTF-8).
    pub fn version(&self) -> &str {
        std::str::from_utf8(self.version_bytes()).unwrap_or_default()
    }
}

/// A byte a plugin name may contain: `a-z`, `0-9`, `-`, `_`.
const fn is_name_byte(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'
}

/// Why a declaration's bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclarationError {
    Short,
    BadMagic,
    BadLength,
    NotUtf8,
    BadName,
    BadVersion,
}

impl std::fmt::Display for DeclarationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Short => "declaration is shorter than 120 bytes",
            Self::BadMagic => "declaration does not start with the Balut magic bytes",
            Self::BadLength => "declaration has an out-of-range name or version length",
            Self::NotUtf8 => "declaration name or version is not UTF-8",
            Self::BadName => {
                "declaration name is empty or has characters other than a-z, 0-9, '-' and '_'"
            }
            Self::BadVersion => "declaration version is empty or has control characters",
        })
    }
}

impl std::error::Error for DeclarationError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_le_bytes(d: &PluginDeclaration) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&d.magic);
        out.extend_from_slice(&d.interface_major.to_le_bytes());
        out.extend_from_slice(&d.interface_minor.to_le_bytes());
        out.extend_from_slice(&d.name_len.to_le_bytes());
        out.extend_from_slice(&d.name);
        out.extend_from_slice(&d.version_len.to_le_bytes());
        out.extend_from_slice(&d.version);
        out
    }

    #[test]
    fn round_trips_through_bytes() {
        let d = PluginDeclaration::new("http-echo", "1.2.3", 1, 0);
        let bytes = to_le_bytes(&d);
        assert_eq!(bytes.len(), DECLARATION_SIZE);
        let back = PluginDeclaration::from_le_bytes(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.name(), "http-echo");
        assert_eq!(back.version(), "1.2.3");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            PluginDeclaration::from_le_bytes(&[0; 10]),
            Err(DeclarationError::Short)
        );
        assert_eq!(
            PluginDeclaration::from_le_bytes(&[0; 120]),
            Err(DeclarationError::BadMagic)
        );
        let mut bytes = to_le_bytes(&PluginDeclaration::new("a", "1", 1, 0));
        bytes[16] = 200;
        assert_eq!(
            PluginDeclaration::from_le_bytes(&bytes),
            Err(DeclarationError::BadLength)
        );
    }

    #[test]
    fn rejects_names_and_versions_new_would_refuse() {
        let good = to_le_bytes(&PluginDeclaration::new("ab", "1", 1, 0));
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            PluginDeclaration::from_le_bytes(&bytes)
        };
        assert_eq!(with(16, 0), Err(DeclarationError::BadName), "empty name");
        assert_eq!(with(20, b'/'), Err(DeclarationError::BadName));
        assert_eq!(with(21, b' '), Err(DeclarationError::BadName));
        assert_eq!(with(20, b'A'), Err(DeclarationError::BadName));
        assert_eq!(with(84, 0), Err(DeclarationError::BadVersion), "empty");
        assert_eq!(with(88, b'\n'), Err(DeclarationError::BadVersion));
        assert!(with(88, b'2').is_ok());
    }
}
