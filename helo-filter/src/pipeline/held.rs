//! The client segments the gate held before their flow's verdict, kept by the daemon
//! until that verdict: an accept re-injects the flow's held segment (see
//! [`super::reinject`]), so that a client that sent its next command before the verdict
//! does not wait for TCP's retransmission timeout; a reject under `reply` answers it (see
//! [`super::answer`]); any other reject forgets it.
//!
//! The kernel reports a held segment in the same program run that drops it, so by the time
//! the daemon writes a verdict, every segment its flow had held is in the ring buffer; but
//! the ring-buffer reader and the enforcer are separate tasks, and either may come first.
//! Whichever comes second finds the other's mark in the flow's slot: a verdict leaves a
//! [`Slot::Decided`] mark for a moment, so that a held segment read after it still meets
//! its verdict.
//!
//! One segment per flow, the first reported (later ones are retransmissions of it, or
//! commands after it, which TCP delivers once the MTA acknowledges the first), at most
//! [`MAX_FLOWS`] flows: past that a held segment is not kept, and TCP retransmits it.

use std::time::{Duration, Instant};

use dashmap::{DashMap, mapref::entry::Entry};
use helo_filter_common::{CaptureEvent, FlowKey};

use super::reinject::Reinjector;
use crate::{metrics, metrics::HeldFate};

/// A held segment waits this long for its flow's verdict (normally milliseconds).
const HELD_FOR: Duration = Duration::from_secs(10);
/// A verdict's mark waits this long for a held segment the reader has not read yet: the
/// segment was in the ring buffer before the verdict, so it comes within the reader's next
/// wake-ups.
const DECIDED_FOR: Duration = Duration::from_secs(2);
/// Flows with a held segment or a verdict's mark, at most.
pub const MAX_FLOWS: usize = 65_536;

/// A client segment held by the gate, as the kernel reported it.
#[derive(Clone, Debug)]
pub struct Held {
    pub stream_start_seq: u32,
    /// The interface it came in on (where it is re-injected).
    pub ifindex: u32,
    /// From its TCP header on, as reported (the payload possibly cut short).
    pub bytes: Vec<u8>,
    /// Its payload's length on the wire.
    pub wire_len: u16,
    since: Instant,
}

impl Held {
    fn from_event(event: &CaptureEvent, now: Instant) -> Held {
        Held {
            stream_start_seq: event.stream_start_seq,
            ifindex: event.ifindex,
            bytes: event.payload().to_vec(),
            wire_len: event.wire_len,
            since: now,
        }
    }
}

/// What the daemon knows of one flow's held segment.
#[derive(Debug)]
enum Slot {
    /// Held, its verdict not in yet.
    Held(Held),
    /// The verdict came first: a held segment of the flow read after it meets it here.
    Decided {
        stream_start_seq: u32,
        accepted: bool,
        since: Instant,
    },
}

impl Slot {
    fn stream_start_seq(&self) -> u32 {
        match self {
            Slot::Held(held) => held.stream_start_seq,
            Slot::Decided {
                stream_start_seq, ..
            } => *stream_start_seq,
        }
    }
}

/// The held segments of flows awaiting their verdicts (see the module's comment).
pub struct HeldSegments {
    slots: DashMap<FlowKey, Slot>,
    /// `None`: re-injection is off (`[enforce] reinject_held = false`), and an accepted
    /// flow's held segment is left to TCP's retransmission.
    reinjector: Option<Reinjector>,
}

impl HeldSegments {
    pub fn new(reinjector: Option<Reinjector>) -> HeldSegments {
        HeldSegments {
            slots: DashMap::new(),
            reinjector,
        }
    }

    /// A segment the gate held, as the reader reads it: kept until the flow's verdict, or
    /// re-injected at once if the flow was accepted already.
    pub fn hold(&self, event: &CaptureEvent) {
        if let Some(held) = self.keep(event.key, Held::from_event(event, Instant::now())) {
            self.reinject(&event.key, &held);
        }
    }

    /// A gated flow's verdict, other than a reject the answerer answers: an accepted
    /// flow's held segment is re-injected; a rejected flow's forgotten. If nothing is held
    /// yet, the verdict is marked for a segment the reader has yet to read.
    pub fn decided(&self, key: FlowKey, stream_start_seq: u32, accepted: bool) {
        if let Some(held) = self.mark(key, stream_start_seq, accepted) {
            self.reinject(&key, &held);
        }
    }

    fn reinject(&self, key: &FlowKey, held: &Held) {
        if let Some(reinjector) = &self.reinjector {
            reinjector.reinject(key, held);
        }
    }

    /// [`HeldSegments::hold`]'s bookkeeping: the segment back if its flow was accepted.
    fn keep(&self, key: FlowKey, held: Held) -> Option<Held> {
        let full = self.slots.len() >= MAX_FLOWS;
        match self.slots.entry(key) {
            Entry::Occupied(slot) if slot.get().stream_start_seq() == held.stream_start_seq => {
                match slot.get() {
                    Slot::Decided { accepted, .. } => {
                        let accepted = *accepted;
                        slot.remove();
                        accepted.then_some(held)
                    }
                    // The first one stays.
                    Slot::Held(_) => None,
                }
            }
            // A previous connection's (its 4-tuple reused since).
            Entry::Occupied(mut slot) => {
                slot.insert(Slot::Held(held));
                None
            }
            Entry::Vacant(_) if full => {
                metrics::held_segment(HeldFate::NotKept);
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(Slot::Held(held));
                None
            }
        }
    }

    /// [`HeldSegments::decided`]'s bookkeeping: the held segment back if the flow was
    /// accepted.
    fn mark(&self, key: FlowKey, stream_start_seq: u32, accepted: bool) -> Option<Held> {
        let full = self.slots.len() >= MAX_FLOWS;
        match self.slots.entry(key) {
            Entry::Occupied(slot) if slot.get().stream_start_seq() == stream_start_seq => {
                match slot.remove() {
                    Slot::Held(held) if accepted => Some(held),
                    _ => None,
                }
            }
            // Full: a held segment read later is not kept, as one read now would not be.
            Entry::Vacant(_) if full => None,
            Entry::Occupied(mut slot) => {
                slot.insert(Slot::Decided {
                    stream_start_seq,
                    accepted,
                    since: Instant::now(),
                });
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(Slot::Decided {
                    stream_start_seq,
                    accepted,
                    since: Instant::now(),
                });
                None
            }
        }
    }

    /// The flow's held segment, taken (a reject the answerer answers).
    pub fn take(&self, key: &FlowKey, stream_start_seq: u32) -> Option<Held> {
        match self.slots.remove_if(
            key,
            |_, slot| matches!(slot, Slot::Held(held) if held.stream_start_seq == stream_start_seq),
        ) {
            Some((_, Slot::Held(held))) => Some(held),
            _ => None,
        }
    }

    /// Forgets held segments whose verdict never came, and verdicts' marks no segment met.
    pub fn expire(&self, now: Instant) {
        self.slots.retain(|_, slot| match slot {
            Slot::Held(held) => now.duration_since(held.since) < HELD_FOR,
            Slot::Decided { since, .. } => now.duration_since(*since) < DECIDED_FOR,
        });
    }

    /// Flows with a held segment or a verdict's mark.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            sport: port,
            dport: 25,
            ..FlowKey::default()
        }
    }

    fn held(stream_start_seq: u32, bytes: &[u8]) -> Held {
        Held {
            stream_start_seq,
            ifindex: 2,
            bytes: bytes.to_vec(),
            wire_len: bytes.len() as u16,
            since: Instant::now(),
        }
    }

    /// The payload of what came back, if anything.
    fn bytes(held: Option<Held>) -> Option<Vec<u8>> {
        held.map(|held| held.bytes)
    }

    #[test]
    fn an_accept_after_the_segment_returns_it_to_re_inject() {
        let segments = HeldSegments::new(None);
        assert!(segments.keep(key(1), held(7, b"MAIL")).is_none());
        assert_eq!(
            bytes(segments.mark(key(1), 7, true)),
            Some(b"MAIL".to_vec())
        );
        assert!(segments.is_empty(), "nothing left behind");
    }

    #[test]
    fn a_segment_read_after_its_accept_is_returned_at_once() {
        let segments = HeldSegments::new(None);
        assert!(segments.mark(key(1), 7, true).is_none());
        assert_eq!(
            bytes(segments.keep(key(1), held(7, b"MAIL"))),
            Some(b"MAIL".to_vec())
        );
        assert!(segments.is_empty(), "the mark is used up");
    }

    #[test]
    fn a_rejected_flows_segment_is_forgotten_whichever_comes_first() {
        let segments = HeldSegments::new(None);
        segments.keep(key(1), held(7, b"MAIL"));
        assert!(segments.mark(key(1), 7, false).is_none());
        assert!(segments.mark(key(2), 9, false).is_none());
        assert!(segments.keep(key(2), held(9, b"MAIL")).is_none());
        assert!(segments.is_empty());
    }

    #[test]
    fn the_first_segment_stays_and_a_reused_tuple_starts_afresh() {
        let segments = HeldSegments::new(None);
        segments.keep(key(1), held(7, b"first"));
        segments.keep(key(1), held(7, b"again"));
        assert_eq!(bytes(segments.take(&key(1), 7)), Some(b"first".to_vec()));
        // An old connection's mark does not meet a new connection's segment.
        segments.mark(key(1), 7, true);
        assert!(segments.keep(key(1), held(8, b"new")).is_none());
        assert!(segments.take(&key(1), 7).is_none(), "another connection's");
        assert_eq!(bytes(segments.mark(key(1), 8, true)), Some(b"new".to_vec()));
    }

    #[test]
    fn segments_and_marks_expire() {
        let segments = HeldSegments::new(None);
        segments.keep(key(1), held(7, b"MAIL"));
        segments.mark(key(2), 9, true);
        let now = Instant::now();
        segments.expire(now + DECIDED_FOR);
        assert_eq!(segments.len(), 1, "the mark went, the segment stays");
        segments.expire(now + HELD_FOR);
        assert!(segments.is_empty());
        assert!(
            segments.keep(key(2), held(9, b"MAIL")).is_none(),
            "the mark expired"
        );
    }

    #[test]
    fn past_the_cap_nothing_more_is_kept() {
        let segments = HeldSegments::new(None);
        for port in 0..MAX_FLOWS {
            segments.mark(key(port as u16), port as u32, true);
        }
        // Ports wrap at 65,536 = MAX_FLOWS: every key is taken once.
        assert_eq!(segments.len(), MAX_FLOWS);
        let extra = FlowKey {
            dport: 587,
            ..key(1)
        };
        assert!(segments.keep(extra, held(1, b"MAIL")).is_none());
        assert!(segments.mark(extra, 1, true).is_none());
        assert_eq!(segments.len(), MAX_FLOWS);
    }
}
