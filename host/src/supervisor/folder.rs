//! The folder's timing: which names are due for a look, and when. Events (and rescans)
//! only mark a name; a name is looked at once it has been quiet for [`QUIET`], and a file
//! that is not yet a whole library is looked at again until it has settled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How long a name must be free of events before it is looked at: long enough to merge
/// the events of one `cp` or rename, far shorter than a human notices.
pub const QUIET: Duration = Duration::from_millis(20);

/// How often a folder that is gone is looked for, so hot plug resumes soon after it is
/// back (deleted and created again, renamed back, replaced by a symlink).
pub const LOST_POLL: Duration = Duration::from_millis(500);

/// The watch on the folder itself.
#[derive(Debug, Default)]
pub struct Watch {
    /// The folder (device, inode) the watch is armed on.
    pub armed: Option<(u64, u64)>,
    /// Why the folder is gone, while it is.
    pub lost: Option<String>,
    /// When to look for it again.
    pub next_look: Option<Instant>,
}

/// Names waiting to be looked at, and when each last had an event.
#[derive(Debug, Default)]
pub struct Pending {
    due: HashMap<PathBuf, Instant>,
    last_event: HashMap<PathBuf, Instant>,
}

impl Pending {
    /// An event for `path`: look at it once it has been quiet for [`QUIET`].
    pub fn touch(&mut self, path: PathBuf, now: Instant) {
        self.due.insert(path.clone(), now + QUIET);
        self.last_event.insert(path, now);
    }

    /// A whole file renamed to `path`: look at it now, unless a write to it is still
    /// being waited out (a rename does not cut a writer's quiet period short).
    pub fn arrived(&mut self, path: PathBuf, now: Instant) {
        let written_lately = self
            .last_event
            .get(&path)
            .is_some_and(|at| now.saturating_duration_since(*at) < QUIET);
        if written_lately {
            self.touch(path, now);
        } else {
            self.due.insert(path.clone(), now);
            self.last_event.insert(path, now);
        }
    }

    /// Look at `path` again at `at` (unless an event brings it forward).
    pub fn retry_at(&mut self, path: PathBuf, at: Instant) {
        let due = self.due.entry(path).or_insert(at);
        *due = (*due).min(at);
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// The names due by `now`, sorted, removed from the queue.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due: Vec<PathBuf> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        due.sort();
        for path in &due {
            self.due.remove(path);
        }
        due
    }

    /// `path` was looked at and needs no further look: forget its last event unless
    /// another look is already due.
    pub fn settled(&mut self, path: &Path) {
        if !self.due.contains_key(path) {
            self.last_event.remove(path);
        }
    }

    pub fn forget(&mut self, path: &Path) {
        self.due.remove(path);
        self.last_event.remove(path);
    }

    /// When a file that does not load as a whole library may still be being written, when
    /// to look again: `settle` after its last event or write, whichever is later.
    pub fn still_settling(
        &self,
        path: &Path,
        modified: Option<SystemTime>,
        settle: Duration,
        now: Instant,
    ) -> Option<Instant> {
        let event_age = self.last_event.get(path).map(|at| now.duration_since(*at));
        // A modification time in the future tells nothing; the events still do.
        let write_age = modified.and_then(|m| SystemTime::now().duration_since(m).ok());
        let age = event_age.into_iter().chain(write_age).min()?;
        (age < settle).then(|| now + (settle - age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_file_renamed_in_is_looked_at_at_once_unless_it_was_just_written() {
        let mut pending = Pending::default();
        let start = Instant::now();
        let a = PathBuf::from("/p/a.so");
        pending.arrived(a.clone(), start);
        assert_eq!(pending.take_due(start), vec![a.clone()]);

        // Written to a moment ago, then renamed over: the writer's quiet period holds.
        let b = PathBuf::from("/p/b.so");
        pending.touch(b.clone(), start);
        pending.arrived(b.clone(), start + Duration::from_millis(5));
        assert!(
            pending
                .take_due(start + Duration::from_millis(5))
                .is_empty()
        );
        assert_eq!(
            pending.take_due(start + Duration::from_millis(25)),
            vec![b.clone()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_waits_for_quiet_and_keeps_the_earliest_retry() {
        let mut pending = Pending::default();
        let start = Instant::now();
        let a = PathBuf::from("/p/a.so");
        pending.touch(a.clone(), start);
        assert_eq!(pending.next_due(), Some(start + QUIET));
        assert!(pending.take_due(start).is_empty());
        // Another event pushes the look back.
        pending.touch(a.clone(), start + Duration::from_millis(10));
        assert!(pending.take_due(start + QUIET).is_empty());
        assert_eq!(
            pending.take_due(start + Duration::from_millis(30)),
            vec![a.clone()]
        );
        assert_eq!(pending.next_due(), None);
        let settle = Duration::from_secs(1);
        assert_eq!(
            pending.still_settling(&a, None, settle, start + Duration::from_millis(10)),
            Some(start + Duration::from_millis(1010))
        );

        pending.retry_at(a.clone(), start + Duration::from_secs(1));
        pending.retry_at(a.clone(), start + Duration::from_millis(500));
        assert_eq!(pending.next_due(), Some(start + Duration::from_millis(500)));
        pending.forget(&a);
        assert_eq!(pending.next_due(), None);
        assert_eq!(pending.still_settling(&a, None, settle, start), None);
    }
}
