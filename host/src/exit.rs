//! Leaving the process at once. `std::process::exit` runs the C library's exit path:
//! `atexit` handlers and `_dl_fini`, which runs every loaded library's finalizers under
//! glibc's loader lock. A plugin thread stuck in its initializers or finalizers holds that
//! lock, and `exit` would wait on it forever; `_exit(2)` ends the process without either.

/// Ends the process now with `code`: no `atexit` handlers, no library finalizers, no
/// flushing of stdio buffers (the log is written unbuffered to stderr).
pub fn immediately(code: u8) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes any status; it never returns. Nothing
    // of the process needs to run after it: the private copies were deleted by the caller,
    // and the plugins' threads end with the process.
    unsafe { libc::_exit(i32::from(code)) }
}
