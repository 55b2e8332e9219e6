//! The bounded ring of allocation events kept for the memory timeline.

/// Whether a history event is an allocation or a free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistoryEventKind {
    /// A block was handed out.
    Alloc,
    /// A block was returned.
    Free,
}

/// One allocation event in the history ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistoryEvent {
    /// Allocation or free.
    pub kind: HistoryEventKind,
    /// Address of the block.
    pub addr: usize,
    /// Size of the block.
    pub size_bytes: u64,
    /// Milliseconds since the profiler was created
    /// ([`Profiler::now_ms`](super::Profiler::now_ms)).
    pub at_ms: u32,
}

// The history limit's memory figure assumes 24-byte events.
const _: () = assert!(size_of::<HistoryEvent>() <= 24);

/// A ring of at most `capacity_events` events; when full, a new event
/// overwrites the oldest and is counted in `dropped_events`.
///
/// Invariants: `events.len() <= capacity_events`; `oldest == 0` until the
/// ring is full, then `oldest < capacity_events`.
#[derive(Debug)]
pub(super) struct HistoryRing {
    events: Vec<HistoryEvent>,
    capacity_events: usize,
    /// Index of the oldest event once the ring is full.
    oldest: usize,
    dropped_events: u64,
}

impl HistoryRing {
    /// A ring of `capacity_events` (0 = history off). Allocated up front so
    /// recording never allocates and its memory is known.
    pub(super) fn new(capacity_events: usize) -> Self {
        HistoryRing {
            events: Vec::with_capacity(capacity_events),
            capacity_events,
            oldest: 0,
            dropped_events: 0,
        }
    }

    pub(super) fn push(&mut self, event: HistoryEvent) {
        if self.capacity_events == 0 {
            return;
        }
        if self.events.len() < self.capacity_events {
            self.events.push(event);
        } else {
            self.events[self.oldest] = event;
            self.oldest = (self.oldest + 1) % self.capacity_events;
            self.dropped_events += 1;
        }
    }

    /// The events, oldest first.
    pub(super) fn to_vec(&self) -> Vec<HistoryEvent> {
        let mut events = Vec::with_capacity(self.events.len());
        events.extend_from_slice(&self.events[self.oldest..]);
        events.extend_from_slice(&self.events[..self.oldest]);
        events
    }

    pub(super) fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.events.capacity() * size_of::<HistoryEvent>()
    }

    pub(super) fn check_invariants(&self) {
        assert!(
            self.events.len() <= self.capacity_events,
            "history ring holds {} events, capacity {}",
            self.events.len(),
            self.capacity_events
        );
        if self.events.len() < self.capacity_events {
            assert!(
                self.oldest == 0 && self.dropped_events == 0,
                "history ring not full ({} of {}) but oldest = {}, dropped = {}",
                self.events.len(),
                self.capacity_events,
                self.oldest,
                self.dropped_events
            );
        } else if self.capacity_events > 0 {
            assert!(
                self.oldest < self.capacity_events,
                "history ring oldest index {} >= capacity {}",
                self.oldest,
                self.capacity_events
            );
        }
    }
}
