//! Naming the container whose code crashed or exited the host.
//!
//! Plugin code runs in the host's process, so a segfault, an `abort`, a stack overflow or an
//! `exit()` in it ends the host. This module makes sure that, when it does, one line on
//! stderr names the thread, hence the container and generation, whose code did it, and that
//! an `exit()` from plugin code never ends the host with code 0 (which a service manager
//! would take for a clean stop):
//!
//! - [`name_this_thread`]: the threads that run plugin code (`balut:<name>`, `balut-load`,
//!   `balut-check`) register themselves in `registry.rs`'s static table until they end.
//! - [`install`]: handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT that write the
//!   line with `write(2)` only (no allocation, no lock: async-signal-safe), on the thread's
//!   alternate signal stack, then let the signal do what it did before (std's stack overflow
//!   report for SIGSEGV/SIGBUS, else death by the signal, with a core where enabled).
//! - an exit hook (glibc's `on_exit`, else `atexit`): an `exit()` that is not balut's own
//!   ([`exiting_on_purpose`] marks those) writes the line and ends the process with the
//!   code given to [`install`].
//!
//! This is low-level process and signal code: all of this module's `unsafe` is in this
//! file, each block with its reason.

mod registry;

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub use registry::Role;
use registry::{Stack, Who};

/// The signals whose default action ends the process with a core, and that plugin code
/// raises by crashing.
const FATAL: [(c_int, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGABRT, "SIGABRT"),
];

/// The dispositions found at [`install`], in [`FATAL`]'s order.
static PREVIOUS: OnceLock<[libc::sigaction; FATAL.len()]> = OnceLock::new();
/// Set by balut's own exit paths: an `exit()` then is not plugin code's.
static ON_PURPOSE: AtomicBool = AtomicBool::new(false);
/// The exit code that replaces an `exit()` from plugin code.
static EXIT_CODE: AtomicI32 = AtomicI32::new(70);
/// Whether an `exit()` from plugin code keeps its own code (an isolated container's process).
static KEEP_CODE: AtomicBool = AtomicBool::new(false);
/// The last thread that wrote a fatal-signal line: a crash that leads to another signal on
/// the same thread (std's stack overflow report aborts) writes one line, not two.
static REPORTED_BY: AtomicI32 = AtomicI32::new(0);

/// Installs the fatal-signal handlers and the exit hook (once; later calls do nothing).
/// `exit_code` replaces the code of an `exit()` called from plugin code. Call it early,
/// before any plugin is loaded.
pub fn install(exit_code: u8) -> std::io::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    EXIT_CODE.store(i32::from(exit_code), Ordering::SeqCst);
    DONE.get_or_init(|| install_once().map_err(|e| e.to_string()))
        .clone()
        .map_err(std::io::Error::other)
}

/// [`install`] for an isolated container's process: an `exit(N)` from plugin code still
/// writes its line, but ends the process with N (the host reports `exited with code N`).
pub fn install_keeping_exit_codes() -> std::io::Result<()> {
    KEEP_CODE.store(true, Ordering::SeqCst);
    install(70)
}

/// Tells the exit hook that the process is exiting through balut's own path (returning
/// from `main`, a forced exit), so an `exit()` is not plugin code's.
pub fn exiting_on_purpose() {
    ON_PURPOSE.store(true, Ordering::SeqCst);
}

/// Registers the calling thread as running plugin code as `role` for `name` (a container's
/// name, or a plugin file's name for a load or a config check) of `generation`, for as long
/// as the returned guard lives: hold it for the thread's whole body.
///
/// A guard, not a thread-local: glibc's `exit` runs the calling thread's thread-local
/// destructors before the exit hooks, which would unname the thread just before the hook
/// looks it up.
pub fn name_this_thread(role: Role, name: &str, generation: u64) -> ThreadName {
    let slot = registry::register(current_tid(), role, name, generation, current_stack());
    ThreadName {
        slot,
        _altstack: AltStack::ensure(),
        _same_thread: std::marker::PhantomData,
    }
}

/// A thread's entry in the table (and the alternate stack made for it, if it had none),
/// released when dropped, on the same thread.
#[must_use = "the thread is named only while this lives"]
pub struct ThreadName {
    slot: Option<usize>,
    _altstack: Option<AltStack>,
    /// Not `Send`: the entry is keyed by the thread that made it.
    _same_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for ThreadName {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            registry::release(slot);
        }
    }
}

fn install_once() -> std::io::Result<()> {
    let mut previous = [empty_action(); FATAL.len()];
    for ((signal, _), slot) in FATAL.iter().zip(previous.iter_mut()) {
        // SAFETY: reads the current disposition of a valid signal into a valid struct;
        // `act` is null, so nothing changes.
        if unsafe { libc::sigaction(*signal, std::ptr::null(), slot) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // Set before any handler can run: the handlers read it.
    let _ = PREVIOUS.set(previous);
    let mut action = empty_action();
    action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
    // SA_ONSTACK: a stack overflow leaves no stack to run on. No SA_NODEFER: the signal
    // stays blocked while the handler runs, so one raised again there waits for its return.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    for (signal, name) in FATAL {
        // SAFETY: `action` is a valid sigaction whose handler only calls async-signal-safe
        // functions (see `on_fatal_signal`); `oldact` is null.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::other(format!(
                "installing the {name} handler: {e}"
            )));
        }
    }
    install_exit_hook()
}

/// In an isolated container's process: SIGTERM and SIGINT end it only when the host sends
/// them. Others (a terminal's Ctrl-C to its process group, systemd's SIGTERM to every
/// process of the unit) are for the host, which then stops its containers in order.
pub fn obey_only_the_parent() -> std::io::Result<()> {
    let mut action = empty_action();
    action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `action` is a valid sigaction whose handler only calls async-signal-safe
        // functions (see `on_stop_signal`); `oldact` is null.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Dies by `signal` if the parent sent it, else ignores it. Async-signal-safe calls only:
/// `getppid`, `sigaction`, `raise`.
extern "C" fn on_stop_signal(signal: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (null was checked); for a
    // signal sent with kill(2), si_pid is the field it filled.
    let sender = unsafe { (*info).si_pid() };
    // SAFETY: getppid has no preconditions and cannot fail.
    if sender == unsafe { libc::getppid() } {
        die_by(signal);
    }
}

fn empty_action() -> libc::sigaction {
    // SAFETY: `sigaction` is a plain C struct for which all zeroes is valid: SIG_DFL, an
    // empty mask, no flags.
    unsafe { std::mem::zeroed() }
}

/// The fatal-signal handler. Only async-signal-safe calls: `gettid`, `prctl(PR_GET_NAME)`,
/// `write`, `sigaction`, `raise`, reads of atomics and of the static table.
extern "C" fn on_fatal_signal(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let (fault, addr) = fault_of(signal, info);
    let tid = current_tid();
    if REPORTED_BY.swap(tid, Ordering::SeqCst) != tid {
        let who = Who::of(tid, kernel_thread_name());
        let overflow = addr.is_some_and(|addr| who.overflowed_at(addr));
        let name = FATAL
            .iter()
            .find(|(s, _)| *s == signal)
            .map_or("a fatal signal", |(_, name)| name);
        write_stderr(registry::fatal_line(name, overflow, addr, &who).as_bytes());
    }
    let previous = FATAL
        .iter()
        .position(|(s, _)| *s == signal)
        .and_then(|i| PREVIOUS.get().map(|p| p[i]));
    let Some(previous) = previous else {
        die_by(signal);
        return;
    };
    if fault {
        // Put back what was there and return: the instruction runs again, faults again,
        // and the previous disposition handles it with its true siginfo (std's stack
        // overflow report; else the default action: death by the signal).
        // SAFETY: `previous` is a disposition `sigaction` returned for this very signal.
        unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
        return;
    }
    let handler = previous.sa_sigaction;
    if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: with SA_SIGINFO, sa_sigaction holds a three-argument handler; it is
            // called as the kernel would have, on the same signal stack.
            let chained: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                unsafe { std::mem::transmute(handler) };
            chained(signal, info, context);
        } else {
            // SAFETY: without SA_SIGINFO, sa_sigaction holds a one-argument handler.
            let chained: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
            chained(signal);
        }
    }
    die_by(signal);
}

/// Whether the kernel raised `signal` for a fault of the thread's own instruction (a
/// positive `si_code`; zero or less means sent: `kill`, `raise`, `abort`), and the faulting
/// address it reported (SIGSEGV and SIGBUS only).
fn fault_of(signal: c_int, info: *const libc::siginfo_t) -> (bool, Option<usize>) {
    if info.is_null() {
        return (false, None);
    }
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (null was checked).
    let info = unsafe { &*info };
    if info.si_code <= 0 {
        return (false, None);
    }
    if signal != libc::SIGSEGV && signal != libc::SIGBUS {
        return (true, None);
    }
    // SAFETY: for a fault-raised SIGSEGV or SIGBUS, si_addr is the field the kernel filled.
    let addr = unsafe { info.si_addr() } as usize;
    (true, Some(addr))
}

/// Makes `signal` end the process by its default action once the handler returns: the
/// default disposition, and the signal raised again (blocked until the handler returns).
fn die_by(signal: c_int) {
    let default = empty_action();
    // SAFETY: `default` is SIG_DFL with an empty mask; `raise` is async-signal-safe.
    unsafe {
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

#[cfg(target_env = "gnu")]
unsafe extern "C" {
    /// glibc's `on_exit`: like `atexit`, and the hook gets the code passed to `exit`.
    fn on_exit(function: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

#[cfg(target_env = "gnu")]
fn install_exit_hook() -> std::io::Result<()> {
    extern "C" fn hook(status: c_int, _arg: *mut c_void) {
        after_exit(Some(status));
    }
    // SAFETY: registers a function that lives as long as the program; the argument is
    // unused.
    match unsafe { on_exit(hook, std::ptr::null_mut()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::other(
            "registering the exit hook (on_exit) failed",
        )),
    }
}

#[cfg(not(target_env = "gnu"))]
fn install_exit_hook() -> std::io::Result<()> {
    extern "C" fn hook() {
        after_exit(None);
    }
    // SAFETY: registers a function that lives as long as the program.
    match unsafe { libc::atexit(hook) } {
        0 => Ok(()),
        _ => Err(std::io::Error::other(
            "registering the exit hook (atexit) failed",
        )),
    }
}

/// Runs inside `exit()`, on the thread that called it.
fn after_exit(status: Option<c_int>) {
    let tid = current_tid();
    let who = Who::of(tid, kernel_thread_name());
    // A registered thread is always plugin code: balut itself never exits on one. Plugin
    // code never runs on the main thread, whose id is the process's: an exit there is
    // balut's (returning from `main`, also after a panic in it).
    let main_thread = u32::try_from(tid).is_ok_and(|tid| tid == std::process::id());
    if !who.is_known() && (main_thread || ON_PURPOSE.load(Ordering::SeqCst)) {
        return;
    }
    let code = match status {
        Some(status) if KEEP_CODE.load(Ordering::SeqCst) => status,
        _ => EXIT_CODE.load(Ordering::SeqCst),
    };
    write_stderr(registry::exit_line(status, code, &who).as_bytes());
    // SAFETY: `_exit` ends the process at once with `code`. Skipping what `exit` would do
    // next is the point, and sound: the remaining exit handlers, the flush of C stdio (balut
    // writes through Rust's std, which `exit` does not flush anyway) and the libraries'
    // finalizers (plugin code, under the loader lock, while other threads still run) are
    // not needed for a process that did not mean to end; the kernel reclaims the rest.
    unsafe { libc::_exit(code) }
}

/// Writes all of `bytes` to stderr with `write(2)` (async-signal-safe), retrying a short
/// or interrupted write, giving up on any other error.
fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for `bytes.len()` bytes for the whole call.
        let written =
            unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(written) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n.min(bytes.len())..],
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => return,
        }
    }
}

/// The calling thread's kernel id (`gettid(2)`: a system call, async-signal-safe).
fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// The calling thread's kernel name (`comm`, at most 15 bytes and a NUL).
fn kernel_thread_name() -> [u8; 16] {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the buffer given.
    let _ = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    name
}

/// The calling thread's stack bounds, for telling a stack overflow (zeroes if unknown).
fn current_stack() -> Stack {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread when it returns
    // 0; it is read only then and destroyed once.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return Stack::default();
        }
        let mut attr = attr.assume_init();
        let mut low: *mut c_void = std::ptr::null_mut();
        let (mut size, mut guard) = (0, 0);
        let ok = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0
            && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if !ok {
            return Stack::default();
        }
        Stack {
            low: low as usize,
            guard,
        }
    }
}

/// An alternate signal stack made for a thread that had none (std gives one to every thread
/// it starts when it installed its own SIGSEGV handler, so this is the exception).
struct AltStack {
    /// Only held: the kernel uses it, through the pointer given to `sigaltstack`.
    _memory: Box<[u8]>,
}

impl AltStack {
    const SIZE: usize = 64 * 1024;

    /// The calling thread's alternate stack, made if it has none; `None` if it has one.
    fn ensure() -> Option<Self> {
        let mut current = std::mem::MaybeUninit::<libc::stack_t>::uninit();
        // SAFETY: with a null `ss`, sigaltstack only fills `old_ss`, read only on success.
        let current = unsafe {
            if libc::sigaltstack(std::ptr::null(), current.as_mut_ptr()) != 0 {
                return None;
            }
            current.assume_init()
        };
        if current.ss_flags & libc::SS_DISABLE == 0 {
            return None;
        }
        let mut memory = vec![0u8; Self::SIZE].into_boxed_slice();
        let stack = libc::stack_t {
            ss_sp: memory.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: memory.len(),
        };
        // SAFETY: the memory stays allocated until `drop` disables the stack first.
        if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
            return None;
        }
        Some(Self { _memory: memory })
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disables this thread's alternate stack (ours, made by `ensure` on this
        // thread) before its memory is freed.
        unsafe { libc::sigaltstack(&disable, std::ptr::null_mut()) };
    }
}
