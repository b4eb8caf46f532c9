//! Which thread runs plugin code for which container (and generation), readable from a
//! signal handler, and the one line a crash or an exit writes.
//!
//! The table is a fixed static array written with atomics: registering and reading it never
//! allocates, locks or calls into libc, so the fatal-signal handler and the exit hook may
//! read it whatever the crashed thread was doing. A slot is claimed by a compare-and-swap of
//! its thread id from 0, filled, then published by storing the thread id; only the owning
//! thread ever releases it, so a reader that finds its own thread id reads a settled slot.
//! The lines are built in a fixed buffer on the stack.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// How many threads can be registered at once (one per live container instance, plus the
/// short-lived load and config check threads). A thread beyond that is not named.
const SLOTS: usize = 1024;
/// Bytes of a name kept (container names are at most 64; file names are cut here).
const NAME_BYTES: usize = 96;
/// A slot being filled.
const CLAIMED: i32 = -1;

/// What a registered thread does for plugin code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// `balut:<name>`: every call into one container instance.
    Container = 1,
    /// `balut-load`: opening a plugin file (its initializers) and abi_stable's checks.
    Load = 2,
    /// `balut-check`: a plugin's config check.
    Check = 3,
}

impl Role {
    fn from_u8(n: u8) -> Option<Self> {
        match n {
            1 => Some(Self::Container),
            2 => Some(Self::Load),
            3 => Some(Self::Check),
            _ => None,
        }
    }
}

/// Where a thread's stack ends, to tell a stack overflow from another bad access.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stack {
    /// The lowest address of the stack (it grows down towards it).
    pub low: usize,
    /// The size of the guard area below it.
    pub guard: usize,
}

impl Stack {
    /// Whether a fault at `addr` hit the guard area (as std's own check: glibc reports the
    /// guard inside or below the stack depending on its version, so both count).
    pub fn overflowed_at(self, addr: usize) -> bool {
        let guard = self.guard.max(4096);
        self.low != 0 && addr >= self.low.saturating_sub(guard) && addr < self.low + guard
    }
}

struct Slot {
    tid: AtomicI32,
    role: AtomicU8,
    generation: AtomicU64,
    len: AtomicUsize,
    name: [AtomicU8; NAME_BYTES],
    stack_low: AtomicUsize,
    stack_guard: AtomicUsize,
}

impl Slot {
    const fn empty() -> Self {
        Self {
            tid: AtomicI32::new(0),
            role: AtomicU8::new(0),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            name: [const { AtomicU8::new(0) }; NAME_BYTES],
            stack_low: AtomicUsize::new(0),
            stack_guard: AtomicUsize::new(0),
        }
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::empty() }; SLOTS];

/// Records that thread `tid` runs plugin code as `role` for `name` (a container, or a
/// plugin file's name) of `generation`. Returns the slot to [`release`], or `None` when the
/// table is full (the thread is then not named).
pub fn register(tid: i32, role: Role, name: &str, generation: u64, stack: Stack) -> Option<usize> {
    let index = TABLE.iter().position(|slot| {
        slot.tid
            .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })?;
    let slot = &TABLE[index];
    let bytes = cut(name, NAME_BYTES);
    for (cell, &byte) in slot.name.iter().zip(bytes) {
        cell.store(byte, Ordering::Relaxed);
    }
    slot.len.store(bytes.len(), Ordering::Relaxed);
    slot.role.store(role as u8, Ordering::Relaxed);
    slot.generation.store(generation, Ordering::Relaxed);
    slot.stack_low.store(stack.low, Ordering::Relaxed);
    slot.stack_guard.store(stack.guard, Ordering::Relaxed);
    slot.tid.store(tid, Ordering::Release);
    Some(index)
}

/// Frees a slot [`register`] returned; only its own thread calls this.
pub fn release(index: usize) {
    if let Some(slot) = TABLE.get(index) {
        slot.tid.store(0, Ordering::Release);
    }
}

/// The first bytes of `name`, at most `max`, cut on a character boundary.
fn cut(name: &str, max: usize) -> &[u8] {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name.as_bytes()[..end]
}

/// What the table says of one thread, copied out of it.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    role: Role,
    generation: u64,
    name: [u8; NAME_BYTES],
    len: usize,
    stack: Stack,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.name[..self.len.min(NAME_BYTES)]
    }
}

/// The registered entry of thread `tid`, if any. Async-signal-safe.
pub fn find(tid: i32) -> Option<Entry> {
    if tid <= 0 {
        return None;
    }
    let slot = TABLE
        .iter()
        .find(|slot| slot.tid.load(Ordering::Acquire) == tid)?;
    let mut name = [0u8; NAME_BYTES];
    for (byte, cell) in name.iter_mut().zip(&slot.name) {
        *byte = cell.load(Ordering::Relaxed);
    }
    Some(Entry {
        role: Role::from_u8(slot.role.load(Ordering::Relaxed))?,
        generation: slot.generation.load(Ordering::Relaxed),
        name,
        len: slot.len.load(Ordering::Relaxed),
        stack: Stack {
            low: slot.stack_low.load(Ordering::Relaxed),
            guard: slot.stack_guard.load(Ordering::Relaxed),
        },
    })
}

/// The thread a line is about.
#[derive(Debug, Clone, Copy)]
pub enum Who {
    /// A registered thread.
    Known(Entry),
    /// Any other thread, by its kernel name (at most 15 bytes).
    Other { thread: [u8; 16] },
}

impl Who {
    /// The thread `tid`, named `thread` by the kernel (a NUL-terminated `comm`).
    pub fn of(tid: i32, thread: [u8; 16]) -> Self {
        find(tid).map_or(Self::Other { thread }, Self::Known)
    }

    /// Whether the thread runs plugin code for the host (a registered thread).
    pub fn is_known(&self) -> bool {
        matches!(self, Self::Known(_))
    }

    /// Whether a fault at `addr` is this thread's stack overflowing (known threads only).
    pub fn overflowed_at(&self, addr: usize) -> bool {
        match self {
            Self::Known(entry) => entry.stack.overflowed_at(addr),
            Self::Other { .. } => false,
        }
    }
}

/// One line of text in a fixed buffer; what does not fit is cut (and ends with `...`).
pub struct Line {
    buf: [u8; 480],
    len: usize,
    cut: bool,
}

impl Line {
    fn new() -> Self {
        Self {
            buf: [0; 480],
            len: 0,
            cut: false,
        }
    }

    /// The line, with its newline.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) -> &mut Self {
        for &byte in bytes {
            if self.cut {
                return self;
            }
            // Room is kept for "...\n".
            if self.len + 4 >= self.buf.len() {
                self.buf[self.len..self.len + 3].copy_from_slice(b"...");
                self.len += 3;
                self.cut = true;
                return self;
            }
            // A file name may hold anything; a line holds no control characters.
            self.buf[self.len] = if byte < 0x20 || byte == 0x7f {
                b'?'
            } else {
                byte
            };
            self.len += 1;
        }
        self
    }

    fn number(&mut self, n: i64) -> &mut Self {
        if n < 0 {
            self.push(b"-");
        }
        self.unsigned(n.unsigned_abs(), 10)
    }

    fn unsigned(&mut self, mut n: u64, base: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(n % base) as usize];
            n /= base;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..])
    }

    /// Ends the line (`push` always leaves room for the newline).
    fn end(mut self) -> Self {
        if self.len < self.buf.len() {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        self
    }

    /// ` (generation N, thread T)`.
    fn generation_and_thread(&mut self, entry: &Entry) -> &mut Self {
        self.push(b" (generation ")
            .unsigned(entry.generation, 10)
            .push(b", thread ");
        match entry.role {
            Role::Container => self.push(b"balut:").push(entry.name()),
            Role::Load => self.push(b"balut-load"),
            Role::Check => self.push(b"balut-check"),
        };
        self.push(b")")
    }

    fn thread_name(&mut self, thread: &[u8; 16]) -> &mut Self {
        let len = thread.iter().position(|&b| b == 0).unwrap_or(thread.len());
        if len == 0 {
            self.push(b"(unnamed)")
        } else {
            self.push(b"`").push(&thread[..len]).push(b"`")
        }
    }
}

/// `balut: fatal signal SIGSEGV at address 0x8 in container `web` (generation 3, thread
/// balut:web); exiting`: `overflow` when the fault hit the thread's stack guard, `addr` when
/// the kernel reported a faulting address.
pub fn fatal_line(signal: &str, overflow: bool, addr: Option<usize>, who: &Who) -> Line {
    let mut line = Line::new();
    line.push(b"balut: fatal signal ").push(signal.as_bytes());
    if overflow {
        line.push(b" (stack overflow)");
    } else if let Some(addr) = addr {
        line.push(b" at address 0x").unsigned(addr as u64, 16);
    }
    match who {
        Who::Known(entry) => {
            match entry.role {
                Role::Container => line.push(b" in container `"),
                Role::Load => line.push(b" while loading plugin file `"),
                Role::Check => line.push(b" while checking a config with plugin file `"),
            };
            line.push(entry.name())
                .push(b"`")
                .generation_and_thread(entry);
        }
        Who::Other { thread } => {
            line.push(b" in thread ")
                .thread_name(thread)
                .push(b", not a container's worker thread");
        }
    }
    line.push(b"; exiting");
    line.end()
}

/// `balut: container `web` (generation 3, thread balut:web) called exit(0); exiting with
/// code 70`; `status` is the code passed to `exit`, when known.
pub fn exit_line(status: Option<i32>, code: i32, who: &Who) -> Line {
    let mut line = Line::new();
    line.push(b"balut: ");
    match who {
        Who::Known(entry) => {
            match entry.role {
                Role::Container => line.push(b"container `"),
                Role::Load | Role::Check => line.push(b"plugin file `"),
            };
            line.push(entry.name())
                .push(b"`")
                .generation_and_thread(entry);
        }
        Who::Other { thread } => {
            line.push(b"thread ").thread_name(thread);
        }
    }
    line.push(b" called exit(");
    if let Some(status) = status {
        line.number(i64::from(status));
    }
    line.push(b")");
    match who {
        Who::Known(entry) if entry.role == Role::Load => line.push(b" while loading"),
        Who::Known(entry) if entry.role == Role::Check => line.push(b" while checking a config"),
        Who::Known(_) => &mut line,
        Who::Other { .. } => line.push(b" outside balut's own exit path"),
    };
    line.push(b"; exiting with code ").number(i64::from(code));
    line.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(name: &str) -> [u8; 16] {
        let mut buf = [0u8; 16];
        buf[..name.len()].copy_from_slice(name.as_bytes());
        buf
    }

    fn render(line: Line) -> String {
        String::from_utf8(line.as_bytes().to_vec()).unwrap()
    }

    /// Thread ids far above any real one, so parallel tests never see each other's.
    fn fake_tid(n: i32) -> i32 {
        i32::MAX - n
    }

    #[test]
    fn a_registered_thread_is_found_until_released() {
        let tid = fake_tid(1);
        assert!(find(tid).is_none());
        let slot = register(tid, Role::Container, "web", 3, Stack::default()).unwrap();
        let who = Who::of(tid, thread("balut:web"));
        assert!(who.is_known());
        assert_eq!(
            render(fatal_line("SIGSEGV", false, Some(8), &who)),
            "balut: fatal signal SIGSEGV at address 0x8 in container `web` \
             (generation 3, thread balut:web); exiting\n"
        );
        assert_eq!(
            render(exit_line(Some(0), 70, &who)),
            "balut: container `web` (generation 3, thread balut:web) called exit(0); \
             exiting with code 70\n"
        );
        release(slot);
        assert!(find(tid).is_none());
        assert!(!Who::of(tid, thread("balut:web")).is_known());
    }

    #[test]
    fn loads_and_config_checks_name_the_file() {
        let tid = fake_tid(2);
        let slot = register(tid, Role::Load, "libchaos.so", 2, Stack::default()).unwrap();
        let who = Who::of(tid, thread("balut-load"));
        assert_eq!(
            render(fatal_line("SIGABRT", false, None, &who)),
            "balut: fatal signal SIGABRT while loading plugin file `libchaos.so` \
             (generation 2, thread balut-load); exiting\n"
        );
        assert_eq!(
            render(exit_line(Some(-1), 70, &who)),
            "balut: plugin file `libchaos.so` (generation 2, thread balut-load) called \
             exit(-1) while loading; exiting with code 70\n"
        );
        release(slot);
        let slot = register(tid, Role::Check, "libchaos.so", 4, Stack::default()).unwrap();
        let who = Who::of(tid, thread("balut-check"));
        assert_eq!(
            render(fatal_line("SIGILL", false, None, &who)),
            "balut: fatal signal SIGILL while checking a config with plugin file \
             `libchaos.so` (generation 4, thread balut-check); exiting\n"
        );
        release(slot);
    }

    #[test]
    fn other_threads_are_named_by_the_kernel_name() {
        let who = Who::of(fake_tid(3), thread("tokio-runtime-w"));
        assert!(!who.is_known());
        assert_eq!(
            render(fatal_line("SIGBUS", false, None, &who)),
            "balut: fatal signal SIGBUS in thread `tokio-runtime-w`, not a container's \
             worker thread; exiting\n"
        );
        assert_eq!(
            render(exit_line(None, 70, &who)),
            "balut: thread `tokio-runtime-w` called exit() outside balut's own exit path; \
             exiting with code 70\n"
        );
        let unnamed = Who::of(fake_tid(3), [0; 16]);
        assert!(render(exit_line(Some(3), 70, &unnamed)).starts_with("balut: thread (unnamed)"));
    }

    #[test]
    fn a_fault_in_the_stack_guard_is_an_overflow() {
        let stack = Stack {
            low: 0x10_0000,
            guard: 0x1000,
        };
        assert!(stack.overflowed_at(0x10_0000 - 8));
        assert!(stack.overflowed_at(0x10_0000 + 8));
        assert!(!stack.overflowed_at(0x8));
        assert!(!stack.overflowed_at(0x20_0000));
        assert!(!Stack::default().overflowed_at(0));
        let tid = fake_tid(4);
        let slot = register(tid, Role::Container, "deep", 1, stack).unwrap();
        let who = Who::of(tid, thread("balut:deep"));
        assert!(who.overflowed_at(0x10_0000 - 8));
        assert_eq!(
            render(fatal_line("SIGSEGV", true, Some(0x10_0000 - 8), &who)),
            "balut: fatal signal SIGSEGV (stack overflow) in container `deep` \
             (generation 1, thread balut:deep); exiting\n"
        );
        release(slot);
    }

    #[test]
    fn long_and_odd_names_are_cut_and_cleaned() {
        let tid = fake_tid(5);
        let name = format!("evil\nname-{}é", "x".repeat(200));
        let slot = register(tid, Role::Load, &name, 1, Stack::default()).unwrap();
        let who = Who::of(tid, thread("balut-load"));
        let line = render(fatal_line("SIGSEGV", false, None, &who));
        release(slot);
        assert!(
            line.starts_with("balut: fatal signal SIGSEGV while loading plugin file `evil?name-xx")
        );
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.len() <= 480, "{}", line.len());
        assert_eq!(cut("aé", 2), b"a");
        let mut long = Line::new();
        long.push("y".repeat(1000).as_bytes()).push(b"more");
        let long = render(long.end());
        assert!(long.ends_with("y...\n"), "{long:?}");
        assert_eq!(long.len(), 480);
    }
}
