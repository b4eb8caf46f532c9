//! Admission of a file: what a look at it means, given what the host already made of it.
//! A pure function of the record and the observation, so every case is a unit test.

use crate::platform::{Content, Observation, Problem};

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

/// What the host already made of a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    /// The last content (hash) or condition judged.
    pub seen: Option<&'a str>,
    /// The hash of the content in service.
    pub admitted: Option<&'a str>,
    /// Whether a generation of it is in memory.
    pub in_memory: bool,
}

/// Decides what `observation` of a file means, given what is `known` of it (nothing, for
/// a file the host has never seen).
pub fn admit(known: Option<Known<'_>>, observation: Observation) -> Admission {
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
    let Some(known) = known else {
        return Admission::Add(content);
    };
    let hash = Some(content.hash.as_str());
    if known.seen == hash {
        Admission::Unchanged(content)
    } else if known.admitted == hash {
        Admission::Restore(content)
    } else if known.in_memory {
        Admission::Replace(content)
    } else {
        Admission::Add(content)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::platform::Stamp;

    fn content(hash: &str) -> Observation {
        Observation::Content(Content {
            bytes: Arc::new(Vec::new()),
            hash: hash.to_owned(),
            stamp: Stamp {
                len: 0,
                modified: None,
                inode: 1,
            },
        })
    }

    fn known<'a>(seen: &'a str, admitted: &'a str, in_memory: bool) -> Option<Known<'a>> {
        Some(Known {
            seen: Some(seen),
            admitted: Some(admitted),
            in_memory,
        })
    }

    #[test]
    fn a_look_means_what_the_host_already_has_says() {
        assert!(matches!(admit(None, Observation::Gone), Admission::Remove));
        assert!(matches!(
            admit(None, Observation::Changing),
            Admission::LookAgain
        ));
        assert!(matches!(admit(None, content("h1")), Admission::Add(_)));
        // The same content again (a touch, a rescan): nothing.
        assert!(matches!(
            admit(known("h1", "h1", true), content("h1")),
            Admission::Unchanged(_)
        ));
        // New content beside a generation in memory: a swap; with none in memory: a load.
        assert!(matches!(
            admit(known("h1", "h1", true), content("h2")),
            Admission::Replace(_)
        ));
        assert!(matches!(
            admit(known("h1", "h1", false), content("h2")),
            Admission::Add(_)
        ));
        // Refused content (seen h2, h1 in service) replaced by the content in service.
        assert!(matches!(
            admit(known("h2", "h1", true), content("h1")),
            Admission::Restore(_)
        ));
        // The refused content again: still refused, not loaded again.
        assert!(matches!(
            admit(known("h2", "h1", true), content("h2")),
            Admission::Unchanged(_)
        ));
        let unusable = Observation::Unusable {
            problem: Problem::TooLarge,
            message: "big".into(),
            key: "too_large:9".into(),
        };
        assert!(matches!(
            admit(known("h1", "h1", true), unusable),
            Admission::Unusable {
                problem: Problem::TooLarge,
                ..
            }
        ));
    }
}
