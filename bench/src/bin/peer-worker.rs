//! `peer-worker PATH`: the `peers` benchmark's worker for supervisord, the same work as the
//! `ticker` plugin at its default interval: every second it appends one line,
//! `tick <n> <unix_millis>`, to the file at `PATH` (opened for each line, as `ticker` does).
//! It runs until it is killed; SIGTERM ends it at once (the default action).

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: peer-worker PATH");
        return ExitCode::from(2);
    };
    let mut n: u64 = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        n += 1;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(format!("tick {n} {millis}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("peer-worker: {e}");
            return ExitCode::FAILURE;
        }
    }
}
