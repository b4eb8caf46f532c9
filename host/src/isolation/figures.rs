//! What an isolated container's process uses, read from `/proc` when shown: resident memory
//! (`VmRSS` of `/proc/PID/status`) and CPU time (user plus system ticks of `/proc/PID/stat`).

use crate::model::ProcessFigures;

/// Clock ticks per second of `/proc/PID/stat`'s times: the kernel reports them in
/// `USER_HZ`, which is 100 on every Linux architecture whatever its internal tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// The figures of process `pid`, or `None` if it is gone.
pub fn of(pid: u32) -> Option<ProcessFigures> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcessFigures {
        pid,
        rss_bytes: rss_bytes(&status).unwrap_or(0),
        cpu_seconds: cpu_ticks(&stat).map_or(0.0, |ticks| ticks as f64 / TICKS_PER_SECOND),
    })
}

/// `VmRSS:   1234 kB` in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime: fields 14 and 15 of `stat`, counted after the command name, which is in
/// parentheses and may itself hold spaces and parentheses (so: after the last `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_cpu() {
        let status = "Name:\tbalut\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes(status), Some(1234 * 1024));
        let stat = "4242 (balut: a) b) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn this_process_has_figures() {
        let figures = of(std::process::id()).unwrap();
        assert!(figures.rss_bytes > 0);
        assert!(of(u32::MAX).is_none());
    }
}
