//! Admission of a file: what a look at it means, given what the host already made of it.
//! A pure function of the record and the observation, so every case is a unit test.

use crate::platform::{Content, Observation, Problem};

use super::generations::FileRecord;

/// What to do about one name in the folder.
#[derive(Debug)]
pub enum Admission {
    /// It is gone: stop its containers, unload, forget it.
    Remove,
    /// It cannot be used (reported once per condition).
    Unusable {
        problem: Problem,
        message: String,
        key: String,
    },
    /// It changed while being read: look again once quiet.
    LookAgain,
    /// Content already judged: nothing to do (a `touch`, a rescan).
    Unchanged(Content),
    /// The content in service is back after other content was refused: clear the refusal.
    Restore(Content),
    /// New content, and no generation of the file in memory: load it and start its
    /// containers.
    Add(Content),
    /// New content for a file whose generation is in memory: load it beside the old one
    /// and swap, rolling back if the new one fails.
    Replace(Content),
}

/// Decides what `observation` of a file means, given its `record` (if the host knows it).
pub fn admit<L>(record: Option<&FileRecord<L>>, observation: Observation) -> Admission {
    let content = match observation {
        Observation::Gone => return Admission::Remove,
        Observation::Changing => return Admission::LookAgain,
        Observation::Unusable {
            problem,
            message,
            key,
        } => {
            return Admission::Unusable {
                problem,
                message,
                key,
            };
        }
        Observation::Content(content) => content,
    };
    let Some(record) = record else {
        return Admission::Add(content);
    };
    let hash = Some(content.hash.as_str());
    if record.seen.as_deref() == hash {
        Admission::Unchanged(content)
    } else if record.admitted.as_deref() == hash {
        Admission::Restore(content)
    } else if record.current.is_some() {
        Admission::Replace(content)
    } else {
        Admission::Add(content)
    }
}
