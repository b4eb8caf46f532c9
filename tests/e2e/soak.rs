//! Soak test for issue 6: 1,000 random adds, replaces and removes of plugin files at about 20
//! a second (about 50 s), while one thread polls the API and another reads the event stream.
//! Afterwards the host must match the folder, hold exactly the copies it uses and have
//! unmapped every generation it dropped; once every file is removed, its mappings must be
//! back to what they were before the first plugin.
//!
//! Ignored by default; run it with
//! `cargo test -p balut-tests --test e2e -- --ignored soak`.
//! `BALUT_SOAK_SEED` replays another sequence, `BALUT_SOAK_CHANGES` sets the number of changes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use balut_tests::{EventStream, Host, Lib, PluginDir, Put, STATE_TIMEOUT, http_get};
use serde_json::Value;

use crate::churn_model::{Content, Rng, Slots};
use crate::{echo_entry, terminate_cleanly, ticker_entry};

/// Changes per second the churn aims at.
const RATE: u32 = 20;

const SLOTS: usize = 10;

/// One file per plugin name (two files of one plugin would be a `duplicate_plugin` error).
const FILES: [&str; SLOTS] = [
    "libchaos.so",
    "libhttp_echo.so",
    "libticker.so",
    "libpanic.so",
    "libwrong.so",
    "libnoexport.so",
    "junk.so",
    "libcut.so",
    "libmix.so",
    "notes.so",
];

const MODEL: Slots = Slots {
    files: &FILES,
    containers: &[&["chaos"], &["web"], &["ticker"], &["panic-new"]],
    default_instances: &[0, 3],
};

/// A new content for `slot`; `pick` chooses among the slot's kinds, `n` is unique.
fn content_for(slot: usize, n: u64, pick: u64, broken_allowed: bool) -> Content {
    match slot {
        0 => match pick % 6 {
            0 => Content::NotElf(n),
            1 if broken_allowed => Content::BrokenStart(n),
            _ => Content::Good(Lib::Chaos, n),
        },
        1 => match pick % 6 {
            0 => Content::Truncated(Lib::HttpEcho, n),
            _ => Content::Good(Lib::HttpEcho, n),
        },
        2 => match pick % 8 {
            0 => Content::Refused(Lib::NoExport, n),
            _ => Content::Good(Lib::Ticker, n),
        },
        3 => Content::Refused(Lib::PanicNew, n),
        4 => Content::Refused(Lib::WrongInterface, n),
        5 => Content::Refused(Lib::NoExport, n),
        6 => Content::NotElf(n),
        7 => Content::Truncated(Lib::Chaos, n),
        8 => match pick % 3 {
            0 => Content::NotElf(n),
            1 => Content::Truncated(Lib::Ticker, n),
            _ => Content::Refused(Lib::NoExport, n),
        },
        _ => match pick % 2 {
            0 => Content::NotElf(n),
            _ => Content::Truncated(Lib::HttpEcho, n),
        },
    }
}

/// An environment variable parsed as a number (decimal, or hex with `0x`).
fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={text:?}: {e}")))
}

/// What the event reader saw.
#[derive(Debug, Default)]
struct EventTally {
    seen: u64,
    first: Option<u64>,
    last: Option<u64>,
    /// Gaps, repeats and `id:` lines that differ from the data.
    faults: Vec<String>,
}

/// Reads `stream` until `stop` is set and nothing more comes, checking that ids go up by one.
fn read_events(stream: &EventStream, stop: &AtomicBool) -> EventTally {
    let mut t = EventTally::default();
    loop {
        let Some(event) = stream.next(Duration::from_millis(300)) else {
            if stop.load(Ordering::Relaxed) {
                return t;
            }
            continue;
        };
        let Some(id) = event.data["id"].as_u64() else {
            t.faults.push(format!("event without an id: {}", event.raw));
            continue;
        };
        if event.id != Some(id) {
            t.faults
                .push(format!("`id:` {:?} differs from data {id}", event.id));
        }
        if let Some(last) = t.last
            && id != last + 1
        {
            t.faults.push(format!("id {id} after {last}"));
        }
        t.seen += 1;
        t.first.get_or_insert(id);
        t.last = Some(id);
    }
}

#[test]
#[ignore = "soak: run with cargo test -p balut-tests --test e2e -- --ignored soak"]
fn soak_thousand_changes_converge() {
    let seed = env_number("BALUT_SOAK_SEED").unwrap_or(0x0050_a6e6);
    let changes = env_number("BALUT_SOAK_CHANGES").unwrap_or(1000);
    let mut rng = Rng(seed.max(1));
    let mut dir = PluginDir::new();
    let ticks = dir.path().join("ticks.log");
    dir.write_config(&format!(
        "{}{}",
        echo_entry("web", "soak"),
        ticker_entry("ticker", &ticks, 1000)
    ));
    let mut next_n = 0u64;
    let mut n = || {
        next_n += 1;
        next_n
    };
    let mut state: [Option<Content>; SLOTS] = [None; SLOTS];
    // The host's mappings before any plugin, to compare with the end, when every file is
    // gone again.
    let mut host = Host::start(&dir);
    MODEL.converge(&host, &dir, &state, "empty start");
    let before = Mappings::of(&host);
    for (slot, file) in FILES.iter().enumerate() {
        let content = content_for(slot, n(), 2, false);
        dir.put(file, &content.bytes(), Put::Rename);
        state[slot] = Some(content);
    }
    let took = MODEL.converge(&host, &dir, &state, "the first files");
    eprintln!("[soak] seed {seed:#x}, {changes} changes; the first files converged in {took:?}");

    let ways: Vec<Put> = Put::ALL
        .into_iter()
        .filter(|w| *w != Put::MvOtherFs || dir.other_fs().is_some())
        .collect();
    let addr = host.addr();
    let stop = AtomicBool::new(false);
    let polls = AtomicU64::new(0);
    let slowest_poll = Mutex::new(Duration::ZERO);
    let poll_faults = Mutex::new(Vec::<String>::new());
    // Every event, in order, once: read until the checks after the soak are done.
    let events_stop = std::sync::Arc::new(AtomicBool::new(false));
    let stream = EventStream::open(addr, "/v1/events", &[]);
    let reader = std::thread::spawn({
        let events_stop = events_stop.clone();
        move || read_events(&stream, &events_stop)
    });
    let mut ops = Vec::new();
    let mut used_ways = std::collections::BTreeMap::<String, u64>::new();

    let churn_took = std::thread::scope(|s| {
        // The API answers throughout.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for path in ["/v1/containers", "/v1/plugins"] {
                    let asked = Instant::now();
                    let (status, body) = http_get(addr, path);
                    let took = asked.elapsed();
                    let mut slowest = slowest_poll.lock().expect("lock");
                    *slowest = (*slowest).max(took);
                    if status != 200 || serde_json::from_str::<Value>(&body).is_err() {
                        poll_faults
                            .lock()
                            .expect("lock")
                            .push(format!("GET {path}: {status} {body}"));
                    }
                }
                polls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let period = Duration::from_secs(1) / RATE;
        let started = Instant::now();
        for op in 0..changes {
            let due = started + period * u32::try_from(op).expect("changes fit u32");
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let slot = rng.below(SLOTS);
            let file = FILES[slot];
            let how = ways[rng.below(ways.len())];
            if state[slot].is_some() && rng.below(4) == 0 {
                if rng.below(2) == 0 {
                    dir.remove(file);
                    ops.push(format!("{op}: rm {file}"));
                    *used_ways.entry("rm".into()).or_default() += 1;
                } else {
                    dir.move_out(file);
                    ops.push(format!("{op}: mv {file} out"));
                    *used_ways.entry("mv out".into()).or_default() += 1;
                }
                state[slot] = None;
            } else {
                let content = content_for(slot, n(), rng.next(), op < changes * 9 / 10);
                dir.put(file, &content.bytes(), how);
                ops.push(format!("{op}: {how:?} {file} <- {content:?}"));
                *used_ways.entry(format!("{how:?}")).or_default() += 1;
                state[slot] = Some(content);
            }
        }
        // A version that cannot start has no defined end state of its own: replace it.
        if let Some(Content::BrokenStart(_)) = state[0] {
            let content = Content::Good(Lib::Chaos, n());
            dir.put(FILES[0], &content.bytes(), Put::Rename);
            ops.push(format!("final: Rename {} <- {content:?}", FILES[0]));
            state[0] = Some(content);
        }
        let churn_took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        churn_took
    });
    let tail: Vec<&String> = ops.iter().rev().take(40).rev().collect();
    eprintln!(
        "[soak] {} changes in {churn_took:?} ({:.1}/s); ways: {used_ways:?}; last changes:\n{}",
        ops.len(),
        ops.len() as f64 / churn_took.as_secs_f64(),
        tail.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("[soak] the folder now: {state:?}");

    assert!(
        host.is_running(),
        "the host died during the soak\n{}",
        host.logs()
    );
    let poll_faults = poll_faults.into_inner().expect("lock");
    assert!(
        poll_faults.is_empty(),
        "the API failed during the soak:\n{}",
        poll_faults.join("\n")
    );
    eprintln!(
        "[soak] {} API polls (containers + plugins), slowest answer {:?}",
        polls.load(Ordering::Relaxed),
        slowest_poll.into_inner().expect("lock")
    );

    let took = MODEL.converge(&host, &dir, &state, "after the soak");
    eprintln!("[soak] converged {took:?} after the last change (limit {STATE_TIMEOUT:?})");
    // And it stays that way.
    std::thread::sleep(Duration::from_millis(500));
    let problems = MODEL.differences(&host, &dir, &state);
    assert!(
        problems.is_empty(),
        "the host drifted after converging:\n{}\n{}",
        problems.join("\n"),
        host.logs()
    );
    let loaded = state
        .iter()
        .flatten()
        .filter(|c| c.error_kind().is_none())
        .count();
    eprintln!(
        "[soak] {loaded} loaded files, {} private copies, {} mapped copies",
        host.private_copies().len(),
        host.mapped_copies().len()
    );

    events_stop.store(true, Ordering::Relaxed);
    let tally = reader.join().expect("the event reader panicked");
    eprintln!(
        "[soak] {} events seen, ids {:?}..={:?}",
        tally.seen, tally.first, tally.last
    );
    assert!(tally.seen > 0, "the event stream delivered nothing");
    assert!(
        tally.faults.is_empty(),
        "the event stream skipped or repeated ids:\n{}",
        tally.faults.join("\n")
    );
    assert!(host.is_running(), "the host died\n{}", host.logs());

    // Remove every file: the mappings must be back to the start.
    for (slot, file) in FILES.iter().enumerate() {
        if state[slot].take().is_some() {
            dir.remove(file);
        }
    }
    MODEL.converge(&host, &dir, &state, "removing every file");
    let after = Mappings::of(&host);
    eprintln!(
        "[soak] mappings before the first file: {} ({} files); after removing every file: {} ({} files)",
        before.count,
        before.files.len(),
        after.count,
        after.files.len()
    );
    assert!(
        host.private_copies().is_empty(),
        "copies left: {:?}",
        host.private_copies()
    );
    assert_eq!(
        after.files,
        before.files,
        "the host maps other files than before the first plugin\n{}",
        host.maps()
    );
    // Threads and allocator arenas come and go; a leak of a mapping per change would not.
    assert!(
        after.count <= before.count + 64,
        "{} mappings after, {} before\n{}",
        after.count,
        before.count,
        host.maps()
    );
    terminate_cleanly(host);
}

/// What a process has mapped.
struct Mappings {
    /// Every mapping.
    count: usize,
    /// The files mapped (the binary, system libraries; plugin copies while loaded).
    files: std::collections::BTreeSet<String>,
}

impl Mappings {
    fn of(host: &Host) -> Self {
        let maps = host.maps();
        let files = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|path| path.starts_with('/'))
            .map(str::to_owned)
            .collect();
        Self {
            count: maps.lines().count(),
            files,
        }
    }
}
