//! Checks a plugin file's bytes before anything opens it.
//!
//! `dlopen` of a truncated library kills the process with SIGBUS, so the file must be shown
//! whole first: an ELF shared object for this machine whose header tables, sections and
//! loadable segments all lie inside the file. The plugin declaration is read straight from
//! the bytes, so an incompatible plugin is refused before any of its code runs.

use balut_plugin_api::__private::{DECLARATION_SIZE, DECLARATION_SYMBOL, PluginDeclaration};
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

/// abi_stable's exported library header symbol.
pub const HEADER_SYMBOL: &str = abi_stable::library::ROOT_MODULE_LOADER_NAME;

/// Why a file is not a loadable plugin, before it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfProblem {
    NotElf,
    Truncated(String),
    WrongArchitecture(String),
    NotSharedObject(String),
    MissingExport(&'static str),
    BadDeclaration(String),
}

#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: (elf::Machine, &str) = (elf::EM_X86_64, "x86-64");
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: (elf::Machine, &str) = (elf::EM_AARCH64, "aarch64");

fn machine_name(machine: elf::Machine) -> String {
    match machine {
        elf::EM_X86_64 => "x86-64".into(),
        elf::EM_AARCH64 => "aarch64".into(),
        elf::EM_386 => "x86 (32-bit)".into(),
        elf::EM_ARM => "arm (32-bit)".into(),
        elf::EM_RISCV => "risc-v".into(),
        other => format!("machine {}", other.0),
    }
}

/// Checks that `data` is a whole ELF shared object for this machine exporting both plugin
/// symbols, and returns its plugin declaration.
pub fn inspect(data: &[u8]) -> Result<PluginDeclaration, ElfProblem> {
    if data.len() < 4 || data[..4] != elf::ELFMAG {
        return Err(ElfProblem::NotElf);
    }
    // e_ident[EI_CLASS], byte 4: 1 = 32-bit, 2 = 64-bit.
    let Some(&class) = data.get(4) else {
        return Err(ElfProblem::Truncated("ELF header: no class byte".into()));
    };
    if class != elf::ELFCLASS64.0 {
        let class = if class == elf::ELFCLASS32.0 {
            "32-bit"
        } else {
            "unknown class"
        };
        return Err(ElfProblem::WrongArchitecture(format!(
            "{class} ELF, this host is 64-bit {}",
            HOST_MACHINE.1
        )));
    }
    let header = FileHeader64::<Endianness>::parse(data)
        .map_err(|e| ElfProblem::Truncated(format!("ELF header: {e}")))?;
    let endian = header
        .endian()
        .map_err(|e| ElfProblem::Truncated(format!("ELF header: {e}")))?;
    if endian != Endianness::default() {
        return Err(ElfProblem::WrongArchitecture(
            "ELF of the other byte order".into(),
        ));
    }
    let machine = header.e_machine(endian);
    if machine != HOST_MACHINE.0 {
        return Err(ElfProblem::WrongArchitecture(format!(
            "ELF for {}, this host is {}",
            machine_name(machine),
            HOST_MACHINE.1
        )));
    }
    let kind = header.e_type(endian);
    if kind != elf::ET_DYN {
        let what = match kind {
            elf::ET_EXEC => "an executable",
            elf::ET_REL => "an object file",
            elf::ET_CORE => "a core dump",
            _ => "an unknown ELF type",
        };
        return Err(ElfProblem::NotSharedObject(what.into()));
    }
    check_whole(data, header, endian)?;
    find_declaration(data)
}

/// Every byte the dynamic loader or we will read must be inside the file.
fn check_whole(
    data: &[u8],
    header: &FileHeader64<Endianness>,
    endian: Endianness,
) -> Result<(), ElfProblem> {
    let len = data.len() as u64;
    let truncated = |what: String| ElfProblem::Truncated(format!("{what} (file is {len} bytes)"));
    let segments = header
        .program_headers(endian, data)
        .map_err(|e| truncated(format!("program headers: {e}")))?;
    if segments.is_empty() {
        return Err(truncated("no program headers".into()));
    }
    for segment in segments {
        if segment.p_type(endian) == elf::PT_LOAD {
            let end = segment
                .p_offset(endian)
                .saturating_add(segment.p_filesz(endian));
            if end > len {
                return Err(truncated(format!("a loadable segment ends at byte {end}")));
            }
        }
    }
    let sections = header
        .sections(endian, data)
        .map_err(|e| truncated(format!("section headers: {e}")))?;
    for section in sections.iter() {
        if section.sh_type(endian) != elf::SHT_NOBITS {
            let end = section
                .sh_offset(endian)
                .saturating_add(section.sh_size(endian));
            if end > len {
                return Err(truncated(format!("a section ends at byte {end}")));
            }
        }
    }
    Ok(())
}

/// Both exports must be defined; the declaration is read from its section's bytes.
fn find_declaration(data: &[u8]) -> Result<PluginDeclaration, ElfProblem> {
    let file = object::File::parse(data).map_err(|e| ElfProblem::Truncated(format!("ELF: {e}")))?;
    let defined = |name: &str| {
        file.dynamic_symbols()
            .find(|s| s.name() == Ok(name) && !s.is_undefined())
    };
    if defined(HEADER_SYMBOL).is_none() {
        return Err(ElfProblem::MissingExport(HEADER_SYMBOL));
    }
    let symbol =
        defined(DECLARATION_SYMBOL).ok_or(ElfProblem::MissingExport(DECLARATION_SYMBOL))?;
    let bad = |why: &str| ElfProblem::BadDeclaration(format!("`{DECLARATION_SYMBOL}` {why}"));
    if symbol.size() != DECLARATION_SIZE as u64 {
        return Err(bad(&format!(
            "is {} bytes, expected {DECLARATION_SIZE}",
            symbol.size()
        )));
    }
    let section_index = symbol
        .section_index()
        .ok_or_else(|| bad("has no section"))?;
    let section = file
        .section_by_index(section_index)
        .map_err(|e| bad(&e.to_string()))?;
    let bytes = section.data().map_err(|e| bad(&e.to_string()))?;
    let start = symbol
        .address()
        .checked_sub(section.address())
        .and_then(|offset| usize::try_from(offset).ok())
        .ok_or_else(|| bad("lies outside its section"))?;
    let bytes = start
        .checked_add(DECLARATION_SIZE)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| bad("lies outside its section"))?;
    PluginDeclaration::from_le_bytes(bytes).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_executable() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn rejects_non_elf() {
        assert_eq!(inspect(b""), Err(ElfProblem::NotElf));
        assert_eq!(
            inspect(b"hello world, not a library"),
            Err(ElfProblem::NotElf)
        );
    }

    #[test]
    fn rejects_truncated_header() {
        let data = own_executable();
        for cut in [5, 40, 63] {
            assert!(
                matches!(inspect(&data[..cut]), Err(ElfProblem::Truncated(_))),
                "cut at {cut}: {:?}",
                inspect(&data[..cut])
            );
        }
    }

    #[test]
    fn rejects_other_architecture() {
        let mut data = own_executable();
        // e_machine is at offset 18 in the ELF header; claim 32-bit ARM.
        data[18..20].copy_from_slice(&elf::EM_ARM.0.to_le_bytes());
        assert!(
            matches!(inspect(&data), Err(ElfProblem::WrongArchitecture(m)) if m.contains("arm"))
        );
    }

    #[test]
    fn test_binary_is_whole_but_not_a_plugin() {
        // The test binary is a PIE (ET_DYN) whole ELF without plugin exports.
        let data = own_executable();
        let header = FileHeader64::<Endianness>::parse(&data[..]).unwrap();
        let endian = header.endian().unwrap();
        if header.e_type(endian) == elf::ET_DYN {
            assert_eq!(
                inspect(&data),
                Err(ElfProblem::MissingExport(HEADER_SYMBOL))
            );
        } else {
            assert!(matches!(
                inspect(&data),
                Err(ElfProblem::NotSharedObject(_))
            ));
        }
        assert!(check_whole(&data, header, endian).is_ok());
        let cut = &data[..data.len() / 2];
        let header = FileHeader64::<Endianness>::parse(cut).unwrap();
        assert!(matches!(
            check_whole(cut, header, endian),
            Err(ElfProblem::Truncated(_))
        ));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Mutex, OnceLock};

    /// The test binary, read once: it is tens of megabytes, so cases slice it or flip
    /// bytes in place and put them back rather than copy it.
    fn own_executable() -> &'static Mutex<Vec<u8>> {
        static DATA: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
        DATA.get_or_init(|| Mutex::new(std::fs::read(std::env::current_exe().unwrap()).unwrap()))
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Every cut inside the headers, not left to chance: a cut right after the magic
    /// number used to be reported as a wrong architecture (an unknown ELF class).
    #[test]
    fn every_cut_near_the_start_is_truncated() {
        let data = own_executable().lock().unwrap_or_else(|e| e.into_inner());
        let whole = inspect(&data);
        let executable = matches!(whole, Err(ElfProblem::NotSharedObject(_)));
        for cut in 0..4096.min(data.len()) {
            let result = inspect(&data[..cut]);
            assert!(
                matches!(result, Err(ElfProblem::Truncated(_) | ElfProblem::NotElf))
                    || (executable && cut >= 64 && result == whole),
                "cut at {cut}: {result:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_are_refused(data in prop::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert!(inspect(&data).is_err());
        }

        #[test]
        fn arbitrary_bytes_after_elf_magic_are_refused(
            class in prop_oneof![Just(elf::ELFCLASS64.0), any::<u8>()],
            rest in prop::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut data = elf::ELFMAG.to_vec();
            data.push(class);
            data.extend(rest);
            prop_assert!(inspect(&data).is_err());
        }

        #[test]
        fn truncated_elf_is_truncated(cut in any::<prop::sample::Index>()) {
            let data = own_executable().lock().unwrap_or_else(|e| e.into_inner());
            // Cuts near the start are where the header checks are, so half the cases
            // land in the first 4 KiB.
            let len = if cut.index(2) == 0 { data.len().min(4096) } else { data.len() };
            let cut = cut.index(len);
            let whole = inspect(&data);
            let result = inspect(&data[..cut]);
            // A non-PIE test binary is an executable: that is found from the header,
            // before the file is checked for being whole.
            let executable = matches!(whole, Err(ElfProblem::NotSharedObject(_)));
            prop_assert!(
                matches!(result, Err(ElfProblem::Truncated(_) | ElfProblem::NotElf))
                    || (executable && cut >= 64 && result == whole),
                "cut at {cut} of {}: {result:?}",
                data.len()
            );
        }

        #[test]
        fn elf_with_flipped_header_bytes_is_refused(
            flips in prop::collection::vec((0..4096usize, 1..=255u8), 1..8),
        ) {
            let mut data = own_executable().lock().unwrap_or_else(|e| e.into_inner());
            let mut saved = Vec::with_capacity(flips.len());
            for &(at, mask) in &flips {
                saved.push((at, data[at]));
                data[at] ^= mask;
            }
            let result = inspect(&data);
            // Put the bytes back, last flip first, before any assertion can fail.
            for &(at, byte) in saved.iter().rev() {
                data[at] = byte;
            }
            prop_assert!(result.is_err(), "{flips:?}: {result:?}");
        }
    }
}
