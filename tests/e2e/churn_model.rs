//! What the hot-plug tests (`hotplug`, its churn, `soak`) put into plugin files, and the
//! small deterministic generator that picks the churn's changes.

use std::collections::BTreeSet;

use balut_tests::{Lib, lib_bytes, versioned_bytes};

/// Bytes that are not an ELF file, different for every `n`.
pub fn not_elf(n: u64) -> Vec<u8> {
    format!("this is not a plugin, take {n}\n")
        .repeat(64)
        .into_bytes()
}

/// The private copies whose name starts with `stem-`.
pub fn copies_of(copies: &BTreeSet<String>, stem: &str) -> Vec<String> {
    let prefix = format!("{stem}-");
    copies
        .iter()
        .filter(|c| c.starts_with(&prefix))
        .cloned()
        .collect()
}

/// What a file in the churn holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Version `n` of a good plugin.
    Good(Lib, u64),
    /// Not an ELF file.
    NotElf(u64),
    /// A cut-off prefix of a library.
    Truncated(Lib, u64),
    /// Version `n` of a library the host refuses (no export, wrong interface, a
    /// constructor that panics).
    Refused(Lib, u64),
    /// The chaos version whose start fails (rolled back to the running generation).
    BrokenStart(u64),
}

impl Content {
    pub fn bytes(self) -> Vec<u8> {
        match self {
            Content::Good(lib, n) | Content::Refused(lib, n) => versioned_bytes(lib, n),
            Content::BrokenStart(n) => versioned_bytes(Lib::BrokenStart, n),
            Content::NotElf(n) => not_elf(n),
            Content::Truncated(lib, n) => {
                let bytes = lib_bytes(lib);
                let len = bytes.len() / 2 + usize::try_from(n % 1000).expect("small") * 64;
                bytes[..len].to_vec()
            }
        }
    }

    /// The error kind the host reports for this content (`None`: it loads).
    pub fn error_kind(self) -> Option<&'static str> {
        match self {
            Content::Good(..) | Content::BrokenStart(_) => None,
            Content::NotElf(_) => Some("not_elf"),
            Content::Truncated(..) => Some("truncated"),
            Content::Refused(Lib::WrongInterface, _) => Some("interface_mismatch"),
            Content::Refused(Lib::PanicNew, _) => Some("constructor_panicked"),
            Content::Refused(..) => Some("missing_export"),
        }
    }
}

/// xorshift64*: a small deterministic generator, so a failing sequence can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }
}
