//! The supervisor's deterministic simulation (written below).

use super::Supervisor;
use crate::platform::Platform;

/// The supervisor's own state, for the simulation's invariants.
#[derive(Debug, Clone, Default)]
pub struct Inspection {}

impl<P: Platform> Supervisor<P> {
    pub(in crate::supervisor) fn inspect(&self) -> Inspection {
        Inspection {}
    }
}
