//! What a process's resident memory is made of, from `/proc/PID/smaps`: the stacks of its
//! threads (each thread's stack mapping found from the stack pointer in
//! `/proc/PID/task/TID/syscall`), the other anonymous memory (malloc's heap and arenas,
//! channels, tasks, the status board...) and file-backed pages (the executable, libc, the
//! plugin's private copy).

use anyhow::Context;

/// Resident memory of one process, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resident {
    /// Every mapping's `Rss`: the process's `VmRSS`.
    pub total: f64,
    /// The mappings that hold a thread's stack pointer.
    pub stacks: f64,
    /// How many such mappings (threads parked in a system call: all of an idle host's).
    pub stack_count: usize,
    /// The other anonymous mappings (`[heap]`, malloc's arenas, other `mmap`s).
    pub anonymous: f64,
    /// File-backed mappings.
    pub files: f64,
}

struct Mapping {
    start: u64,
    end: u64,
    anonymous: bool,
    rss_kib: f64,
}

/// Reads `/proc/PID/smaps` and the stack pointers of `PID`'s threads.
pub fn resident(pid: u32) -> anyhow::Result<Resident> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                // address perms offset dev inode [path]
                let path = fields.nth(4);
                let anonymous =
                    path.is_none_or(|p| p.starts_with('[') && p != "[vdso]" && p != "[vvar]");
                mappings.push(Mapping {
                    start,
                    end,
                    anonymous,
                    rss_kib: 0.0,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(kib), Some(last)) = (fields.next(), mappings.last_mut()) {
                last.rss_kib = kib.parse().unwrap_or(0.0);
            }
        }
    }
    let mut stack = vec![false; mappings.len()];
    for sp in stack_pointers(pid)? {
        if let Some(at) = mappings.iter().position(|m| m.start <= sp && sp < m.end) {
            stack[at] = true;
        }
    }
    let mut resident = Resident::default();
    for (mapping, is_stack) in mappings.iter().zip(stack) {
        resident.total += mapping.rss_kib;
        if is_stack {
            resident.stacks += mapping.rss_kib;
            resident.stack_count += 1;
        } else if mapping.anonymous {
            resident.anonymous += mapping.rss_kib;
        } else {
            resident.files += mapping.rss_kib;
        }
    }
    Ok(resident)
}

/// The stack pointer of each thread of `pid` that is in a system call (the ninth field of
/// `/proc/PID/task/TID/syscall`; `running` for a thread on a core, which is skipped).
fn stack_pointers(pid: u32) -> anyhow::Result<Vec<u64>> {
    let mut pointers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("syscall")) else {
            continue;
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        if let Some(sp) = fields.get(7).and_then(|f| f.strip_prefix("0x")) {
            if let Ok(sp) = u64::from_str_radix(sp, 16) {
                pointers.push(sp);
            }
        }
    }
    Ok(pointers)
}
