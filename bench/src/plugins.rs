//! Distinct plugins from one build: the same library with another name in its frozen
//! declaration (`BALUT_PLUGIN_DECLARATION`, see `plugin-api/src/declaration.rs`).
//!
//! The name lives only there: the host reads it from the file's bytes, and the root module
//! abi_stable checks carries no name. So a copy with a patched declaration is an honest
//! separate plugin to the host, with its own container named after it.

use anyhow::{Context, bail, ensure};
use balut_plugin_api::__private::{
    DECLARATION_MAGIC, DECLARATION_SIZE, DECLARATION_SYMBOL, PluginDeclaration,
};
use object::{Object, ObjectSection, ObjectSymbol};

/// Offsets in the frozen declaration layout.
const NAME_LEN_AT: usize = 16;
const NAME_AT: usize = 20;
const MAX_NAME_LEN: usize = 64;

/// A plugin library whose declaration can be renamed.
pub struct Template {
    bytes: Vec<u8>,
    /// File offset of the declaration.
    declaration_at: usize,
}

impl Template {
    /// Locates the declaration through its exported symbol and the file range of the
    /// section holding it.
    pub fn new(bytes: Vec<u8>) -> anyhow::Result<Self> {
        let declaration_at = {
            let file = object::File::parse(&*bytes).context("parsing the plugin as ELF")?;
            let symbol = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(DECLARATION_SYMBOL) && !s.is_undefined())
                .with_context(|| format!("no exported `{DECLARATION_SYMBOL}`"))?;
            ensure!(
                symbol.size() == DECLARATION_SIZE as u64,
                "`{DECLARATION_SYMBOL}` is {} bytes",
                symbol.size()
            );
            let section = file.section_by_index(
                symbol
                    .section_index()
                    .context("the declaration has no section")?,
            )?;
            let (section_offset, _) = section
                .file_range()
                .context("the declaration's section has no bytes in the file")?;
            let within = symbol
                .address()
                .checked_sub(section.address())
                .context("the declaration lies outside its section")?;
            usize::try_from(section_offset + within)?
        };
        let template = Self {
            bytes,
            declaration_at,
        };
        let declaration = template.declaration(&template.bytes)?;
        ensure!(declaration.magic == DECLARATION_MAGIC, "bad magic");
        Ok(template)
    }

    fn declaration(&self, bytes: &[u8]) -> anyhow::Result<PluginDeclaration> {
        let at = self.declaration_at;
        let slice = bytes
            .get(at..at + DECLARATION_SIZE)
            .context("the declaration lies outside the file")?;
        PluginDeclaration::from_le_bytes(slice).map_err(|e| anyhow::anyhow!("declaration: {e}"))
    }

    /// The plugin's own name.
    pub fn name(&self) -> anyhow::Result<String> {
        Ok(self.declaration(&self.bytes)?.name().to_owned())
    }

    /// The library's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A copy of the library declaring the plugin `name` (`a-z`, `0-9`, `-`, `_`; at most
    /// 64 bytes), checked by reading the declaration back.
    pub fn renamed(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        {
            bail!("`{name}` is not a valid plugin name");
        }
        let mut bytes = self.bytes.clone();
        let at = self.declaration_at;
        let length = u32::try_from(name.len())?.to_le_bytes();
        bytes[at + NAME_LEN_AT..at + NAME_AT].copy_from_slice(&length);
        let field = &mut bytes[at + NAME_AT..at + NAME_AT + MAX_NAME_LEN];
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        let back = self.declaration(&bytes)?;
        ensure!(
            back.name() == name,
            "the renamed declaration reads `{}`",
            back.name()
        );
        Ok(bytes)
    }
}
