//! How an isolated container's process ended, in the words the API shows: `killed by signal
//! SIGSEGV`, `aborted (SIGABRT)`, `exited with code 3`, `out of memory`, `stack overflow`.
//!
//! The exit status alone cannot tell a stack overflow or a failed allocation from another
//! abort (Rust's runtime reports both on stderr, then aborts), so the child's stderr lines
//! are read for those reports on their way to the host's stderr.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

/// What the child's stderr said before it ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    /// balut's crash line (`... (stack overflow) ...`) or Rust's `has overflowed its stack`.
    pub stack_overflow: bool,
    /// Rust's `memory allocation of N bytes failed`.
    pub out_of_memory: bool,
}

impl Hints {
    /// Takes note of one stderr line.
    pub fn note(&mut self, line: &str) {
        if line.contains("(stack overflow)") || line.contains("has overflowed its stack") {
            self.stack_overflow = true;
        }
        if line.contains("memory allocation of") && line.contains("failed") {
            self.out_of_memory = true;
        }
    }
}

/// The reason a process that ended with `status` is reported with.
pub fn describe(status: ExitStatus, hints: Hints) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    let Some(signal) = status.signal() else {
        return format!("ended: {status}");
    };
    let name = Signal::try_from(signal)
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned());
    let overflow_signal = matches!(
        Signal::try_from(signal),
        Ok(Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGABRT)
    );
    if hints.stack_overflow && overflow_signal {
        return "stack overflow".to_owned();
    }
    if hints.out_of_memory
        && matches!(
            Signal::try_from(signal),
            Ok(Signal::SIGABRT | Signal::SIGKILL)
        )
    {
        return "out of memory".to_owned();
    }
    if signal == Signal::SIGABRT as i32 {
        return "aborted (SIGABRT)".to_owned();
    }
    format!("killed by signal {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signalled(signal: Signal) -> ExitStatus {
        ExitStatus::from_raw(signal as i32)
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn hints(lines: &[&str]) -> Hints {
        let mut hints = Hints::default();
        for line in lines {
            hints.note(line);
        }
        hints
    }

    #[test]
    fn each_ending_has_its_words() {
        let none = Hints::default();
        assert_eq!(describe(exited(3), none), "exited with code 3");
        assert_eq!(describe(exited(0), none), "exited with code 0");
        assert_eq!(
            describe(signalled(Signal::SIGSEGV), none),
            "killed by signal SIGSEGV"
        );
        assert_eq!(
            describe(signalled(Signal::SIGKILL), none),
            "killed by signal SIGKILL"
        );
        assert_eq!(
            describe(signalled(Signal::SIGABRT), none),
            "aborted (SIGABRT)"
        );
    }

    #[test]
    fn stderr_tells_an_overflow_and_a_failed_allocation() {
        let overflow = hints(&[
            "balut: fatal signal SIGSEGV (stack overflow) in container `v` (generation 1, thread balut:v); exiting",
            "thread 'balut:v' has overflowed its stack",
        ]);
        assert_eq!(
            describe(signalled(Signal::SIGABRT), overflow),
            "stack overflow"
        );
        let oom = hints(&["memory allocation of 1073741824 bytes failed"]);
        assert_eq!(describe(signalled(Signal::SIGABRT), oom), "out of memory");
        // A hint does not turn an exit code into something else.
        assert_eq!(describe(exited(3), oom), "exited with code 3");
        let noise = hints(&["the allocation failed", "stack"]);
        assert_eq!(
            describe(signalled(Signal::SIGABRT), noise),
            "aborted (SIGABRT)"
        );
    }
}
