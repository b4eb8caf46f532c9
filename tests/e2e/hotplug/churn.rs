//! 100 changes in about a second over 9 file names, then the host must match the folder.

use std::time::{Duration, Instant};

use balut_tests::{Host, Lib, PluginDir, Put};

use crate::churn_model::{Content, Rng, Slots};
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

const MODEL: Slots = Slots {
    files: &FILES,
    containers: &[
        &["chaos"],
        &["web"],
        &["ticker"],
        &[],
        &[],
        &[],
        &[],
        &[],
        &["panic-new"],
    ],
    default_instances: &[0, 8],
};

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
    let took = MODEL.converge(&host, &dir, &state, "start-up");
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

    let took = MODEL.converge(&host, &dir, &state, "after the churn");
    eprintln!("[churn] converged {took:?} after the last change (goal: 2 s)");
    // And it stays that way.
    std::thread::sleep(Duration::from_millis(500));
    let problems = MODEL.differences(&host, &dir, &state);
    assert!(
        problems.is_empty(),
        "the host drifted after converging:\n{}\n{}",
        problems.join("\n"),
        host.logs()
    );
    terminate_cleanly(host);
}
