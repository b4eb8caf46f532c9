//! Closing generations. `dlclose` runs a library's finalizers under the C library's loader
//! lock, and a finalizer may hang, so a close never runs on the supervisor's task: the
//! platform closes each generation on a thread of its own and reports back. A close that
//! does not report within its timeout is listed as not unloaded (a finalizer hangs); the
//! supervisor, the API and the shutdown go on meanwhile.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::events::EventKind;
use crate::loader::LibraryFacts;
use crate::model::NotUnloaded;
use crate::platform::{Unloaded, file_name};
use crate::status::Board;

/// A close in progress.
struct InFlight {
    facts: LibraryFacts,
    deadline: Instant,
}

/// What a finished or overdue close means for `not_unloaded`.
#[derive(Debug)]
pub enum Verdict {
    /// Gone from memory: nothing to record.
    Unloaded,
    /// Still in memory: record it.
    StaysMapped(NotUnloaded),
    /// A close reported as hung finished after all: take it off the list.
    LateButGone { file: String, generation: u64 },
}

/// The closes in flight.
pub struct Closing {
    in_flight: Vec<InFlight>,
    done: UnboundedSender<Unloaded>,
    timeout: Duration,
    board: Board,
}

fn not_unloaded(facts: &LibraryFacts, reason: String) -> NotUnloaded {
    NotUnloaded {
        file: file_name(&facts.file),
        plugin: facts.info.name.clone(),
        generation: facts.generation,
        copy: facts.copy.display().to_string(),
        reason,
    }
}

impl Closing {
    pub fn new(board: Board, done: UnboundedSender<Unloaded>, timeout: Duration) -> Self {
        Self {
            in_flight: Vec::new(),
            done,
            timeout,
            board,
        }
    }

    /// Where the platform reports finished closes.
    pub fn reports(&self) -> UnboundedSender<Unloaded> {
        self.done.clone()
    }

    /// A close was started for `facts`.
    pub fn started(&mut self, facts: LibraryFacts) {
        self.in_flight.push(InFlight {
            facts,
            deadline: Instant::now() + self.timeout,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// When the first close in flight is overdue.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.iter().map(|c| c.deadline).min()
    }

    /// A close reported back.
    pub fn finished(&mut self, closed: Unloaded) -> Verdict {
        let facts = &closed.facts;
        let file = file_name(&facts.file);
        let generation = facts.generation;
        let report = &closed.report;
        for problem in &report.errors {
            warn!(file, generation, problem = %problem, "while unloading");
        }
        let at = self
            .in_flight
            .iter()
            .position(|c| c.facts.file == facts.file && c.facts.generation == generation);
        let Some(at) = at else {
            // Reported overdue before: it ended after all.
            if report.still_mapped {
                return Verdict::Unloaded; // Already listed.
            }
            info!(
                file,
                generation, "a close reported as hung finished; library unloaded"
            );
            self.publish(&file, generation, false, closed.took);
            return Verdict::LateButGone { file, generation };
        };
        self.in_flight.swap_remove(at);
        self.publish(&file, generation, report.still_mapped, closed.took);
        let copy = facts.copy.display().to_string();
        if report.still_mapped {
            let reason =
                "still mapped after dlclose (a plugin thread or thread-local keeps it alive)";
            warn!(
                file,
                generation,
                copy,
                mapped = true,
                reason,
                "library still mapped"
            );
            Verdict::StaysMapped(not_unloaded(facts, reason.to_owned()))
        } else {
            info!(file, generation, copy, mapped = false, "library unloaded");
            Verdict::Unloaded
        }
    }

    fn publish(&self, file: &str, generation: u64, mapped: bool, took: Duration) {
        self.board.events.publish(EventKind::Unloaded {
            file: file.to_owned(),
            generation,
            mapped,
        });
        self.board.metrics.unloaded(took);
    }

    /// The closes overdue at `now`: each stays in memory for good.
    pub fn overdue(&mut self, now: Instant) -> Vec<NotUnloaded> {
        let timeout = self.timeout;
        let (late, on_time): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|c| c.deadline <= now);
        self.in_flight = on_time;
        late.into_iter()
            .map(|c| {
                let reason = format!(
                    "dlclose did not return within {} ms (a library finalizer hangs); it stays loaded",
                    timeout.as_millis()
                );
                warn!(file = %file_name(&c.facts.file), generation = c.facts.generation, reason, "library cannot be unloaded");
                not_unloaded(&c.facts, reason)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::SystemTime;

    use super::*;
    use crate::loader::{InterfaceVersion, PluginInfo, UnloadReport};

    fn facts(generation: u64) -> LibraryFacts {
        LibraryFacts {
            info: PluginInfo {
                name: "traps".into(),
                version: "0.1.0".into(),
                interface: InterfaceVersion::HOST,
            },
            file: PathBuf::from("/p/traps.so"),
            copy: PathBuf::from(format!("/private/traps-g{generation}.so")),
            generation,
            sha256: "ab".repeat(32),
            loaded_at: SystemTime::UNIX_EPOCH,
            default_requires: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_that_does_not_report_in_time_is_listed_and_a_late_one_taken_off() {
        let (done, _reports) = tokio::sync::mpsc::unbounded_channel();
        let mut closing = Closing::new(Board::default(), done, Duration::from_secs(2));
        closing.started(facts(1));
        closing.started(facts(2));
        let due = closing.next_deadline().expect("two closes in flight");
        assert!(closing.overdue(due - Duration::from_millis(1)).is_empty());
        // Generation 2 reports in time; generation 1 hangs in a finalizer.
        let on_time = Unloaded {
            facts: facts(2),
            report: UnloadReport {
                still_mapped: false,
                errors: Vec::new(),
            },
            took: Duration::from_millis(3),
        };
        assert!(matches!(closing.finished(on_time), Verdict::Unloaded));
        let overdue = closing.overdue(due);
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].generation, 1);
        assert!(
            overdue[0]
                .reason
                .contains("dlclose did not return within 2000 ms")
        );
        assert!(closing.is_empty());
        // If it ends after all, it comes off the list.
        let late = Unloaded {
            facts: facts(1),
            report: UnloadReport {
                still_mapped: false,
                errors: Vec::new(),
            },
            took: Duration::from_secs(9),
        };
        assert!(matches!(
            closing.finished(late),
            Verdict::LateButGone { generation: 1, .. }
        ));
    }
}
