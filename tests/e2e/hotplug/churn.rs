//! 100 changes in about a second over 9 file names, then the host must match the folder.

use std::time::{Duration, Instant};

use balut_tests::{Host, Lib, PluginDir, Put, STATE_TIMEOUT, sha12};
use serde_json::Value;

use crate::churn_model::{Content, Rng, copies_of};
use crate::{echo_entry, terminate_cleanly, ticker_entry};

/// One file per plugin name (two files of one plugin would be a `duplicate_plugin` error).
const FILES: [&str; SLOTS] = [
    "libchaos.so",
    "libhttp_echo.so",
    "libticker.so",
    "libwrong.so",
    "libnoexport.so",
    "junk.so",
    "libcut.so",
    "libmix.so",
    "libpanic.so",
];

const SLOTS: usize = 9;

/// Whether the slot's plugin runs as a default instance (no config entry names it): its
/// container goes away with its file.
fn default_instance(slot: usize) -> bool {
    slot == 0 || slot == 8
}

/// The containers of the good plugin a slot can hold.
fn containers_of(slot: usize) -> &'static [&'static str] {
    match slot {
        0 => &["chaos"],
        1 => &["web"],
        2 => &["ticker"],
        8 => &["panic-new"],
        _ => &[],
    }
}

/// A new content for `slot`; `pick` chooses among the slot's kinds, `n` is unique.
fn content_for(slot: usize, n: u64, pick: u64, broken_allowed: bool) -> Content {
    match slot {
        0 => match pick % 5 {
            0 => Content::NotElf(n),
            1 | 2 if broken_allowed => Content::BrokenStart(n),
            _ => Content::Good(Lib::Chaos, n),
        },
        1 => match pick % 5 {
            0 => Content::Truncated(Lib::HttpEcho, n),
            _ => Content::Good(Lib::HttpEcho, n),
        },
        2 => Content::Good(Lib::Ticker, n),
        3 => Content::Refused(Lib::WrongInterface, n),
        4 => Content::Refused(Lib::NoExport, n),
        5 => Content::NotElf(n),
        6 => Content::Truncated(Lib::Chaos, n),
        8 => Content::Refused(Lib::PanicNew, n),
        _ => match pick % 3 {
            0 => Content::NotElf(n),
            1 => Content::Truncated(Lib::Ticker, n),
            _ => Content::Refused(Lib::NoExport, n),
        },
    }
}

/// What differs between the host's view and the folder (empty: converged).
fn differences(host: &Host, state: &[Option<Content>; SLOTS]) -> Vec<String> {
    let body = host.get_json("/v1/plugins");
    let plugins = body["plugins"].as_array().cloned().unwrap_or_default();
    let containers = host.containers();
    let private = host.private_copies();
    let mapped = host.mapped_copies();
    let mut problems = Vec::new();
    let entry = |file: &str| plugins.iter().find(|p| p["file"] == file);
    let container = |name: &str| containers.iter().find(|c| c["name"] == name);

    for p in &plugins {
        let status = p["status"].as_str().unwrap_or_default();
        if !["loading", "loaded", "unloaded", "error", "unloading"].contains(&status) {
            problems.push(format!("unknown status {status:?}: {p}"));
        }
        let file = p["file"].as_str().unwrap_or_default();
        let present = FILES
            .iter()
            .zip(state)
            .any(|(f, c)| *f == file && c.is_some());
        if !present {
            problems.push(format!("listed but not in the folder: {p}"));
        }
    }
    for (slot, (file, content)) in FILES.iter().zip(state).enumerate() {
        let stem = file.trim_end_matches(".so");
        let copies = copies_of(&private, stem);
        let running: Vec<&Value> = containers_of(slot)
            .iter()
            .filter_map(|n| container(n))
            .filter(|c| c["state"] == "running")
            .collect();
        match content {
            None => {
                if let Some(p) = entry(file) {
                    problems.push(format!("{file} was removed but is listed: {p}"));
                }
                for name in containers_of(slot) {
                    match container(name) {
                        Some(c) if default_instance(slot) => {
                            problems.push(format!(
                                "default container of a removed file is listed: {c}"
                            ));
                        }
                        Some(c) if c["state"] == "running" || c["state"] == "starting" => {
                            problems.push(format!("container of a removed file runs: {c}"));
                        }
                        None if !default_instance(slot) => {
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
                match (content.error_kind(), entry(file)) {
                    (_, None) => problems.push(format!("{file} is not listed")),
                    (None, Some(p)) => {
                        if p["status"] != "loaded" || p["sha256"] != sha.as_str() {
                            problems.push(format!("{file} should be loaded with {sha}: {p}"));
                        }
                        for name in containers_of(slot) {
                            match container(name) {
                                Some(c)
                                    if c["state"] == "running"
                                        && c["sha256"] == sha.as_str()
                                        && c["file"] == *file => {}
                                other => problems
                                    .push(format!("{name} should run on {file} {sha}: {other:?}")),
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
                            problems
                                .push(format!("{file}: its constructor panics, yet: {running:?}"));
                        }
                        // An older generation may keep running; then it has one copy.
                        if copies.len() != running.len().min(1) {
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
    let stray: Vec<&String> = mapped.iter().filter(|m| !private.contains(*m)).collect();
    if !stray.is_empty() {
        problems.push(format!(
            "mapped copies of removed or replaced generations: {stray:?}"
        ));
    }
    let not_unloaded = body["not_unloaded"].as_array().cloned().unwrap_or_default();
    if !not_unloaded.is_empty() {
        problems.push(format!("not unloaded: {not_unloaded:?}"));
    }
    problems
}

/// Polls until the host matches the folder; returns how long that took.
fn converge(host: &Host, state: &[Option<Content>; SLOTS], what: &str) -> Duration {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < STATE_TIMEOUT {
        last = differences(host, state);
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

#[test]
fn hundred_changes_in_a_second_converge() {
    let seed = std::env::var("BALUT_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ee_dba1_u64);
    let mut rng = Rng(seed.max(1));
    let mut dir = PluginDir::new();
    let ticks = dir.path().join("ticks.log");
    dir.write_config(&format!(
        "{}{}",
        echo_entry("web", "churn"),
        ticker_entry("ticker", &ticks, 1000)
    ));
    let mut next_n = 0u64;
    let mut n = || {
        next_n += 1;
        next_n
    };
    let mut state: [Option<Content>; SLOTS] = [None; SLOTS];
    for (slot, file) in FILES.iter().enumerate() {
        let content = content_for(slot, n(), 2, false);
        dir.put(file, &content.bytes(), Put::Rename);
        state[slot] = Some(content);
    }
    let host = Host::start(&dir);
    let took = converge(&host, &state, "start-up");
    eprintln!("[churn] start-up converged in {took:?}");

    let ways: Vec<Put> = Put::ALL
        .into_iter()
        .filter(|w| *w != Put::MvOtherFs || dir.other_fs().is_some())
        .collect();
    let mut ops = Vec::new();
    let mut slowest_answer = Duration::ZERO;
    let started = Instant::now();
    for op in 0..100 {
        let slot = rng.below(SLOTS);
        let file = FILES[slot];
        let how = ways[rng.below(ways.len())];
        if state[slot].is_some() && rng.below(4) == 0 {
            if rng.below(2) == 0 {
                dir.remove(file);
                ops.push(format!("{op}: rm {file}"));
            } else {
                dir.move_out(file);
                ops.push(format!("{op}: mv {file} out"));
            }
            state[slot] = None;
        } else {
            let content = content_for(slot, n(), rng.next(), op < 80);
            dir.put(file, &content.bytes(), how);
            ops.push(format!("{op}: {how:?} {file} <- {content:?}"));
            state[slot] = Some(content);
        }
        if op % 10 == 9 {
            // The API answers throughout.
            let asked = Instant::now();
            host.get_json("/v1/plugins");
            slowest_answer = slowest_answer.max(asked.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // A version that cannot start has no defined end state of its own: replace it.
    if let Some(Content::BrokenStart(_)) = state[0] {
        let content = Content::Good(Lib::Chaos, n());
        dir.put(FILES[0], &content.bytes(), Put::Rename);
        ops.push(format!("final: Rename {} <- {content:?}", FILES[0]));
        state[0] = Some(content);
    }
    let churn_took = started.elapsed();
    eprintln!(
        "[churn] seed {seed:#x}: {} changes in {churn_took:?}:\n{}",
        ops.len(),
        ops.join("\n")
    );
    eprintln!("[churn] the folder now: {state:?}");
    eprintln!("[churn] slowest API answer during the churn: {slowest_answer:?}");

    let took = converge(&host, &state, "after the churn");
    eprintln!("[churn] converged {took:?} after the last change (goal: 2 s)");
    // And it stays that way.
    std::thread::sleep(Duration::from_millis(500));
    let problems = differences(&host, &state);
    assert!(
        problems.is_empty(),
        "the host drifted after converging:\n{}\n{}",
        problems.join("\n"),
        host.logs()
    );
    terminate_cleanly(host);
}
