//! What the hot-plug tests (`hotplug`, its churn, `soak`) put into plugin files, the small
//! deterministic generator that picks the churn's changes, and the check that the host
//! matches the folder.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use balut_tests::{
    Host, Lib, PluginDir, STATE_TIMEOUT, file_sha12, lib_bytes, sha12, versioned_bytes,
};
use serde_json::Value;

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

/// A churn's folder: the file name of each slot, the containers the good plugin of a slot
/// runs (by slot; slots past the end run none), and the slots whose plugin runs as a default
/// instance (no config entry names it: its container goes away with its file; configured
/// ones stay listed).
pub struct Slots {
    pub files: &'static [&'static str],
    pub containers: &'static [&'static [&'static str]],
    pub default_instances: &'static [usize],
}

impl Slots {
    /// What differs between the host's view and the folder, `state` per slot (empty:
    /// converged). The private folder must hold, and the host map, exactly one copy per
    /// generation in use: each loaded file, plus an older generation that keeps running
    /// under a file whose newer content was refused.
    pub fn differences(
        &self,
        host: &Host,
        dir: &PluginDir,
        state: &[Option<Content>],
    ) -> Vec<String> {
        let body = host.get_json("/v1/plugins");
        let plugins = body["plugins"].as_array().cloned().unwrap_or_default();
        let containers = host.containers();
        let private = host.private_copies();
        let mapped = host.mapped_copies();
        let mut problems = Vec::new();
        let entry = |file: &str| plugins.iter().find(|p| p["file"] == file);
        let container = |name: &str| containers.iter().find(|c| c["name"] == name);
        let mut in_use = 0;

        for p in &plugins {
            let status = p["status"].as_str().unwrap_or_default();
            if !["loading", "loaded", "unloaded", "error", "unloading"].contains(&status) {
                problems.push(format!("unknown status {status:?}: {p}"));
            }
            let file = p["file"].as_str().unwrap_or_default();
            let present = self
                .files
                .iter()
                .zip(state)
                .any(|(f, c)| *f == file && c.is_some());
            if !present {
                problems.push(format!("listed but not in the folder: {p}"));
            }
        }
        for (slot, (file, content)) in self.files.iter().zip(state).enumerate() {
            let stem = file.trim_end_matches(".so");
            let copies = copies_of(&private, stem);
            let names = self.containers.get(slot).copied().unwrap_or_default();
            let default_instance = self.default_instances.contains(&slot);
            let running: Vec<&Value> = names
                .iter()
                .filter_map(|n| container(n))
                .filter(|c| c["state"] == "running")
                .collect();
            match content {
                None => {
                    if let Some(p) = entry(file) {
                        problems.push(format!("{file} was removed but is listed: {p}"));
                    }
                    for name in names {
                        match container(name) {
                            Some(c) if default_instance => {
                                problems.push(format!(
                                    "default container of a removed file is listed: {c}"
                                ));
                            }
                            Some(c) if c["state"] == "running" || c["state"] == "starting" => {
                                problems.push(format!("container of a removed file runs: {c}"));
                            }
                            None if !default_instance => {
                                problems.push(format!("configured container {name} is not listed"));
                            }
                            _ => {}
                        }
                    }
                    if !copies.is_empty() {
                        problems.push(format!("{file} was removed, copies remain: {copies:?}"));
                    }
                }
                Some(content) => {
                    let sha = sha12(&content.bytes());
                    let on_disk = file_sha12(&dir.plugins().join(file));
                    if on_disk != sha {
                        problems.push(format!("test bug: {file} holds {on_disk}, expected {sha}"));
                    }
                    match (content.error_kind(), entry(file)) {
                        (_, None) => problems.push(format!("{file} is not listed")),
                        (None, Some(p)) => {
                            in_use += 1;
                            if p["status"] != "loaded" || p["sha256"] != sha.as_str() {
                                problems.push(format!("{file} should be loaded with {sha}: {p}"));
                            }
                            for name in names {
                                match container(name) {
                                    Some(c)
                                        if c["state"] == "running"
                                            && c["sha256"] == sha.as_str()
                                            && c["file"] == *file => {}
                                    other => problems.push(format!(
                                        "{name} should run on {file} {sha}: {other:?}"
                                    )),
                                }
                            }
                            if copies.len() != 1 || !copies[0].contains(&sha) {
                                problems.push(format!(
                                    "{file}: expected one private copy of {sha}: {copies:?}"
                                ));
                            }
                        }
                        (Some(kind), Some(p)) => {
                            if p["status"] != "error" || p["error_kind"] != kind {
                                problems.push(format!("{file} should be an error {kind}: {p}"));
                            }
                            if kind == "constructor_panicked" && !running.is_empty() {
                                problems.push(format!(
                                    "{file}: its constructor panics, yet: {running:?}"
                                ));
                            }
                            // An older generation may keep running; then it has one copy.
                            let keeps = running.len().min(1);
                            in_use += keeps;
                            if copies.len() != keeps {
                                problems.push(format!(
                                    "{file}: {} running containers but copies {copies:?}",
                                    running.len()
                                ));
                            }
                        }
                    }
                }
            }
        }
        if private.len() != in_use {
            problems.push(format!(
                "{} private copies for {in_use} generations in use: {private:?}",
                private.len()
            ));
        }
        if mapped != private {
            problems.push(format!(
                "mapped copies {mapped:?} differ from the current copies {private:?}"
            ));
        }
        let not_unloaded = body["not_unloaded"].as_array().cloned().unwrap_or_default();
        if !not_unloaded.is_empty() {
            problems.push(format!("not unloaded: {not_unloaded:?}"));
        }
        problems
    }

    /// Polls until the host matches the folder; returns how long that took.
    pub fn converge(
        &self,
        host: &Host,
        dir: &PluginDir,
        state: &[Option<Content>],
        what: &str,
    ) -> Duration {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < STATE_TIMEOUT {
            last = self.differences(host, dir, state);
            if last.is_empty() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{what}: the host did not match the folder within {STATE_TIMEOUT:?}:\n{}\nfolder: {state:?}\nhost output:\n{}",
            last.join("\n"),
            host.logs()
        );
    }
}
