//! The connections one API listener holds, at most `max` of them, and the tally of those
//! the limits closed.
//!
//! A new connection over the cap takes the place of the oldest connection that is not in
//! a request (it has not sent a whole request head yet, or it idles between requests): a
//! flood of idle or half-sent requests never shuts out a client that sends its request at
//! once, like a `/healthz` probe. When every connection is in a request, the new one is
//! refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use crate::metrics::Metrics;

/// How often at most the tally of closed connections is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The connections of one listener.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    /// Where the connections come in, for log lines.
    listener: String,
    held: Mutex<Held>,
    tally: Tally,
    /// Where the closes are counted for `/metrics`.
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Held {
    next_id: u64,
    /// By id: oldest first.
    slots: BTreeMap<u64, Arc<Slot>>,
}

/// One connection's place.
#[derive(Debug, Default)]
pub struct Slot {
    id: u64,
    /// Requests in progress, their responses included.
    requests: AtomicUsize,
    /// Whether a request ever came on it.
    served: AtomicBool,
    /// Told when the connection must go at once to make room.
    evicted: Notify,
    /// The connection carries an event stream (its send buffer is bounded).
    streaming: AtomicBool,
    /// The connection's writes stayed blocked past the send timeout.
    stalled: AtomicBool,
}

/// Counts of connections the limits closed since the last log line.
#[derive(Debug, Default)]
struct Tally {
    refused: AtomicU64,
    evicted: AtomicU64,
    header_timeouts: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

/// Why the limits closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Over the cap, with every connection in a request.
    Refused,
    /// Made room for a new one.
    Evicted,
    /// Its first request head did not arrive in time.
    HeaderTimeout,
}

impl Slots {
    pub fn new(max: usize, listener: String, metrics: Arc<Metrics>) -> Self {
        Self {
            max: max.max(1),
            listener,
            held: Mutex::default(),
            tally: Tally::default(),
            metrics,
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for a new connection: a free one, or the place of the oldest connection not
    /// in a request (told to go); `None` when every connection is in a request.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.slots.len() >= self.max {
            let idle = held
                .slots
                .iter()
                .find(|(_, slot)| slot.requests.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            // A request head may complete between this look and the notice: that request
            // is cut, which only happens at the cap.
            let oldest = idle.and_then(|id| held.slots.remove(&id))?;
            oldest.evicted.notify_one();
            self.note(Closed::Evicted);
        }
        held.next_id += 1;
        let slot = Arc::new(Slot {
            id: held.next_id,
            ..Slot::default()
        });
        held.slots.insert(slot.id, slot.clone());
        Some(Ticket {
            slots: self.clone(),
            slot,
        })
    }

    /// How many connections are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }

    /// Counts a connection the limits closed and, at most every ten seconds, logs the
    /// counts since the last line.
    pub fn note(&self, closed: Closed) {
        let (counter, reason) = match closed {
            Closed::Refused => (&self.tally.refused, "refused"),
            Closed::Evicted => (&self.tally.evicted, "evicted"),
            Closed::HeaderTimeout => (&self.tally.header_timeouts, "header_timeout"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.api_connection_closed(&self.listener, reason);
        let mut logged = self
            .tally
            .logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        *logged = Some(Instant::now());
        let take = |counter: &AtomicU64| counter.swap(0, Ordering::Relaxed);
        warn!(
            listener = %self.listener,
            refused = take(&self.tally.refused),
            evicted = take(&self.tally.evicted),
            header_timeouts = take(&self.tally.header_timeouts),
            max_connections = self.max,
            "closed API connections to stay within the limits (counts since the last such line)"
        );
    }
}

/// A connection's hold on its place; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    slots: Arc<Slots>,
    slot: Arc<Slot>,
}

impl Ticket {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // An evicted connection's place was taken already.
        if held
            .slots
            .get(&self.slot.id)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            held.slots.remove(&self.slot.id);
        }
    }
}

impl Slot {
    /// Waits until the connection must go to make room.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// Marks the connection as carrying an event stream.
    pub fn set_streaming(&self) {
        self.streaming.store(true, Ordering::Release);
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    pub fn set_stalled(&self) {
        self.stalled.store(true, Ordering::Release);
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Whether a whole request head ever came on this connection.
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }
}

/// A request in progress on a connection, until its response is sent (or dropped).
#[derive(Debug)]
pub struct InRequest(Arc<Slot>);

impl InRequest {
    pub fn new(slot: Arc<Slot>) -> Self {
        slot.requests.fetch_add(1, Ordering::AcqRel);
        slot.served.store(true, Ordering::Release);
        Self(slot)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_cap_the_oldest_idle_connection_makes_room() {
        let slots = Arc::new(Slots::new(2, "test".into(), Arc::default()));
        let first = slots.admit().expect("room");
        let second = slots.admit().expect("room");
        let busy = InRequest::new(first.slot().clone());
        // The first is in a request: the second, idle, makes room.
        let third = slots.admit().expect("the idle one makes room");
        tokio::time::timeout(Duration::from_secs(5), second.slot().evicted())
            .await
            .expect("the idle connection is told to go");
        assert_eq!(slots.len(), 2);
        // Its ticket dropping later does not free the place the third one took.
        drop(second);
        assert_eq!(slots.len(), 2);
        // Every connection in a request: refused.
        let _also_busy = InRequest::new(third.slot().clone());
        assert!(slots.admit().is_none());
        // A response sent: that connection is idle again, and goes for a new one.
        drop(busy);
        let _fourth = slots.admit().expect("the first is idle again");
        tokio::time::timeout(Duration::from_secs(5), first.slot().evicted())
            .await
            .expect("the first is told to go");
        drop(third);
        assert_eq!(slots.len(), 1);
    }
}
