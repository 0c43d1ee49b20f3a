//! Per-flow reassembly of captured segments into the session's first decisive command:
//! its HELO/EHLO line, or the reason there was none (`no_helo`).
//!
//! Segments are placed by sequence number (the kernel may deliver them out of order,
//! and TCP retransmits), NOOP/RSET lines are skipped, and the first other complete line
//! decides. Memory is bounded per flow (the kernel's own caps) and in total (oldest flow
//! evicted first).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use helo_filter_common::{
    CaptureEvent, FAMILY_IPV4, FlowKey, MAX_CAPTURE_BYTES, MAX_CAPTURE_SEGMENTS, flags,
};

use crate::pipeline::{
    session::{DecisiveSegment, HeloCommand, NoHeloCause, Opening, Session},
    smtp::{Verb, escape_for_log, parse_command, strip_line_end},
};

/// Bounds on what the reassembler holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Flows being reassembled at once; past it the oldest is given up.
    pub max_flows: usize,
    /// A flow still undecided after this long is given up (its events were lost).
    pub flow_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 16_384,
            flow_timeout: Duration::from_secs(60),
        }
    }
}

/// A flow: its 4-tuple and the sequence number its stream started at (two connections
/// that reuse one 4-tuple differ in the latter).
type FlowId = (FlowKey, u32);

struct FlowBuffer {
    started: Instant,
    /// Segments by stream offset, not yet contiguous with `stream`.
    pending: BTreeMap<u32, Vec<u8>>,
    /// The contiguous stream from offset 0.
    stream: Vec<u8>,
    /// Where the line scan resumes in `stream`.
    scanned: usize,
    segments: u8,
    /// The kernel saw bytes it did not copy, or bytes after the deciding line.
    kernel_saw_more: bool,
}

pub struct Reassembler {
    limits: Limits,
    flows: HashMap<FlowId, FlowBuffer>,
    /// Flows in arrival order, for eviction and time-outs (may hold ids already gone).
    arrival: VecDeque<(FlowId, Instant)>,
    /// Recently decided flows, so that their late segments are ignored.
    decided: HashSet<FlowId>,
    decided_order: VecDeque<FlowId>,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        // The decided flows fill up to their cap in any long run: sized for it once, so
        // that the daemon's memory does not step up as they double on the way (the 30-minute
        // soak saw each doubling as a step in its resident size). A hash set whose entries
        // come and go rehashes in place only while at most half full, so it gets twice the
        // room, where it would have ended anyway.
        let decided_cap = limits.max_flows + 1;
        Reassembler {
            limits,
            flows: HashMap::new(),
            arrival: VecDeque::new(),
            decided: HashSet::with_capacity(2 * decided_cap),
            decided_order: VecDeque::with_capacity(decided_cap),
        }
    }

    pub fn flows_in_progress(&self) -> usize {
        self.flows.len()
    }

    /// Adds one captured segment; returns the session once the flow is decided, and the
    /// number of flows abandoned to make room.
    pub fn push(&mut self, event: &CaptureEvent, now: Instant) -> (Option<Session>, usize) {
        let id = (event.key, event.stream_start_seq);
        if self.decided.contains(&id) {
            return (None, 0);
        }
        let mut evicted = 0;
        if !self.flows.contains_key(&id) {
            while self.flows.len() >= self.limits.max_flows && self.evict_oldest() {
                evicted += 1;
            }
            self.arrival.push_back((id, now));
        }
        let flow = self.flows.entry(id).or_insert_with(|| FlowBuffer {
            started: now,
            pending: BTreeMap::new(),
            stream: Vec::new(),
            scanned: 0,
            segments: 0,
            kernel_saw_more: false,
        });
        flow.segments = flow.segments.saturating_add(1);
        flow.kernel_saw_more |= event.flags & (flags::TRUNCATED | flags::PIPELINED) != 0;
        let offset = event.seq.wrapping_sub(event.stream_start_seq);
        if (offset as usize) < MAX_CAPTURE_BYTES {
            // Of two segments at one offset (a retransmission cut differently), the longer
            // is kept: keeping the first could leave a gap no later segment fills.
            let kept = flow.pending.entry(offset).or_default();
            if event.payload().len() > kept.len() {
                *kept = event.payload().to_vec();
            }
        }
        flow.absorb_pending();
        let opening = flow.scan().or_else(|| {
            let capped = event.flags & flags::CAPPED != 0
                || flow.segments >= MAX_CAPTURE_SEGMENTS
                || flow.stream.len() >= MAX_CAPTURE_BYTES;
            capped.then_some(Opening::NoHelo(NoHeloCause::CapExceeded))
        });
        let after_decisive_seq = event.stream_start_seq.wrapping_add(flow.scanned as u32);
        let session = opening.map(|opening| {
            self.flows.remove(&id);
            self.remember_decided(id);
            let (client, server) = endpoints(&event.key);
            Session {
                flow: event.key,
                stream_start_seq: event.stream_start_seq,
                after_decisive_seq,
                decisive_segment: DecisiveSegment {
                    seq: event.seq,
                    ack: event.ack,
                    held: event.flags & flags::HELD != 0,
                },
                gated: event.flags & flags::UNGATED == 0,
                client,
                server,
                ifindex: event.ifindex,
                timestamp_ns: event.timestamp_ns,
                opening,
            }
        });
        (session, evicted)
    }

    /// Gives up flows that have waited longer than the time-out; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some(&(id, arrived)) = self.arrival.front() {
            let live = self.flows.get(&id).is_some_and(|f| f.started == arrived);
            if live && now.duration_since(arrived) < self.limits.flow_timeout {
                break;
            }
            self.arrival.pop_front();
            if live {
                self.flows.remove(&id);
                expired += 1;
            }
        }
        expired
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((id, arrived)) = self.arrival.pop_front() {
            if self.flows.get(&id).is_some_and(|f| f.started == arrived) {
                self.flows.remove(&id);
                return true;
            }
        }
        false
    }

    fn remember_decided(&mut self, id: FlowId) {
        if self.decided.insert(id) {
            self.decided_order.push_back(id);
        }
        while self.decided_order.len() > self.limits.max_flows {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
    }
}

impl FlowBuffer {
    /// Moves pending segments that now touch the contiguous stream into it; overlapping
    /// bytes (retransmissions) are taken from what arrived first.
    fn absorb_pending(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            let offset = *entry.key() as usize;
            if offset > self.stream.len() {
                break;
            }
            let bytes = entry.remove();
            let already = self.stream.len() - offset;
            if let Some(new) = bytes.get(already..) {
                let room = MAX_CAPTURE_BYTES - self.stream.len();
                self.stream.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
    }

    /// Looks at the complete lines not yet scanned; the first that is not NOOP/RSET
    /// decides the session.
    fn scan(&mut self) -> Option<Opening> {
        while let Some(end) = self.stream[self.scanned..].iter().position(|b| *b == b'\n') {
            let line_end = self.scanned + end + 1;
            let line = strip_line_end(&self.stream[self.scanned..line_end]);
            self.scanned = line_end;
            let command = parse_command(line);
            match command.verb {
                Verb::Skippable => continue,
                Verb::Helo | Verb::Ehlo => {
                    return Some(Opening::Helo(HeloCommand {
                        verb: command.verb,
                        argument: command.argument.to_vec(),
                        escaped_line: escape_for_log(line),
                        pipelined: line_end < self.stream.len() || self.kernel_saw_more,
                    }));
                }
                Verb::Other => {
                    return Some(Opening::NoHelo(NoHeloCause::OtherCommandFirst {
                        escaped_line: escape_for_log(line),
                    }));
                }
            }
        }
        None
    }
}

/// The flow's client and server addresses.
pub(super) fn endpoints(key: &FlowKey) -> (SocketAddr, SocketAddr) {
    (
        socket_addr(key, key.saddr, key.sport),
        socket_addr(key, key.daddr, key.dport),
    )
}

fn socket_addr(key: &FlowKey, addr: [u8; 16], port: u16) -> SocketAddr {
    let ip = if key.family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    };
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use helo_filter_common::FAMILY_IPV6;
    use proptest::prelude::*;

    use super::*;

    fn key(sport: u16) -> FlowKey {
        let mut key = FlowKey {
            family: FAMILY_IPV4,
            sport,
            dport: 25,
            ..FlowKey::default()
        };
        key.saddr[..4].copy_from_slice(&[203, 0, 113, 10]);
        key.daddr[..4].copy_from_slice(&[198, 51, 100, 25]);
        key
    }

    const START: u32 = 1_000;

    fn event(key: FlowKey, offset: u32, payload: &[u8], event_flags: u32) -> CaptureEvent {
        let mut data = [0u8; MAX_CAPTURE_BYTES];
        data[..payload.len()].copy_from_slice(payload);
        CaptureEvent {
            key,
            ifindex: 7,
            flags: event_flags,
            timestamp_ns: 42,
            seq: START.wrapping_add(offset),
            stream_start_seq: START,
            len: payload.len() as u16,
            wire_len: payload.len() as u16,
            ack: 0,
            data,
        }
    }

    fn feed(r: &mut Reassembler, events: &[CaptureEvent]) -> Vec<Session> {
        let now = Instant::now();
        events.iter().filter_map(|e| r.push(e, now).0).collect()
    }

    fn helo(session: &Session) -> &HeloCommand {
        match &session.opening {
            Opening::Helo(h) => h,
            other => panic!("expected a HELO, got {other:?}"),
        }
    }

    /// A client's opening: NOOP/RSET lines or none, then its HELO/EHLO line; and the name
    /// it gives.
    fn opening() -> impl Strategy<Value = (Vec<u8>, String, String)> {
        (
            prop::collection::vec(prop_oneof![Just("NOOP\r\n"), Just("RSET\r\n")], 0..3),
            prop_oneof![Just("HELO"), Just("EHLO"), Just("ehlo")],
            "[a-zA-Z0-9][a-zA-Z0-9.-]{0,40}",
        )
            .prop_map(|(before, verb, name)| {
                let line = format!("{verb} {name}");
                let mut stream = before.concat().into_bytes();
                stream.extend_from_slice(line.as_bytes());
                stream.extend_from_slice(b"\r\n");
                (stream, line, name)
            })
    }

    proptest! {
        /// However the client's stream is cut into segments, in whatever order they are
        /// captured, with duplicates and retransmissions that overlap them, the session has
        /// the HELO line the whole stream has, and is decided exactly once.
        #[test]
        fn any_segmentation_order_and_retransmission_yields_the_same_helo(
            (stream, line, name) in opening(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            again in prop::collection::vec(
                (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
                0..4,
            ),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let len = stream.len();
            let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(len)).collect();
            bounds.extend([0, len]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut ranges: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
            for (a, b) in &again {
                let (a, b) = (a.index(len), b.index(len) + 1);
                if a < b {
                    ranges.push((a, b));
                }
            }
            // Swaps: an arbitrary order of arrival.
            for (i, j) in order.iter().enumerate() {
                let (i, j) = (i % ranges.len(), j.index(ranges.len()));
                ranges.swap(i, j);
            }
            let events: Vec<CaptureEvent> = ranges
                .iter()
                .map(|&(a, b)| event(key(40_000), a as u32, &stream[a..b], 0))
                .collect();
            let sessions = feed(&mut Reassembler::new(Limits::default()), &events);
            prop_assert_eq!(sessions.len(), 1);
            let helo = helo(&sessions[0]);
            prop_assert_eq!(&helo.escaped_line, &line);
            prop_assert_eq!(&helo.argument, &name.into_bytes());
            prop_assert_eq!(
                sessions[0].after_decisive_seq,
                START.wrapping_add(len as u32)
            );
        }
    }

    /// The decided flows stay within their cap, in the memory they had from the start: a
    /// long run's resident size does not step up as they fill.
    #[test]
    fn decided_flows_keep_their_first_allocation() {
        let limits = Limits {
            max_flows: 64,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let (set, order) = (r.decided.capacity(), r.decided_order.capacity());
        assert!(set > limits.max_flows && order > limits.max_flows);
        for port in 0..1_000 {
            let sessions = feed(&mut r, &[event(key(port), 0, b"HELO a.example\r\n", 0)]);
            assert_eq!(sessions.len(), 1);
        }
        assert_eq!(r.decided.len(), limits.max_flows);
        assert_eq!(
            (r.decided.capacity(), r.decided_order.capacity()),
            (set, order)
        );
    }

    #[test]
    fn one_segment_helo() {
        let mut r = Reassembler::new(Limits::default());
        let sessions = feed(&mut r, &[event(key(1), 0, b"EHLO mail.example.net\r\n", 0)]);
        assert_eq!(sessions.len(), 1);
        let h = helo(&sessions[0]);
        assert_eq!(h.verb, Verb::Ehlo);
        assert_eq!(h.argument, b"mail.example.net");
        assert_eq!(h.escaped_line, "EHLO mail.example.net");
        assert!(!h.pipelined);
        assert_eq!(sessions[0].client, "203.0.113.10:1".parse().unwrap());
        assert_eq!(sessions[0].server, "198.51.100.25:25".parse().unwrap());
        assert_eq!(r.flows_in_progress(), 0);
    }

    #[test]
    fn split_verb_out_of_order_and_retransmitted() {
        let mut r = Reassembler::new(Limits::default());
        let k = key(2);
        let sessions = feed(
            &mut r,
            &[
                event(k, 2, b"LO mail", flags::CONTINUATION),
                event(k, 0, b"EH", 0),
                event(k, 0, b"EH", 0),
                event(k, 9, b".example.net\r\n", flags::CONTINUATION),
            ],
        );
        assert_eq!(sessions.len(), 1);
        assert_eq!(helo(&sessions[0]).argument, b"mail.example.net");
    }

    #[test]
    fn noop_and_rset_are_skipped() {
        let mut r = Reassembler::new(Limits::default());
        let sessions = feed(
            &mut r,
            &[event(
                key(3),
                0,
                b"NOOP\r\nRSET\r\nHELO a.example.net\r\n",
                0,
            )],
        );
        assert_eq!(helo(&sessions[0]).argument, b"a.example.net");
    }

    #[test]
    fn pipelined_bytes_after_helo_are_flagged() {
        let mut r = Reassembler::new(Limits::default());
        let sessions = feed(
            &mut r,
            &[event(
                key(4),
                0,
                b"HELO a.example.net\r\nMAIL FROM:<>\r\n",
                0,
            )],
        );
        assert!(helo(&sessions[0]).pipelined);
        // The kernel's word counts too (bytes it did not copy).
        let sessions = feed(
            &mut r,
            &[event(
                key(5),
                0,
                b"HELO a.example.net\r\n",
                flags::PIPELINED,
            )],
        );
        assert!(helo(&sessions[0]).pipelined);
    }

    #[test]
    fn other_command_first_is_no_helo() {
        let mut r = Reassembler::new(Limits::default());
        let sessions = feed(&mut r, &[event(key(6), 0, b"MAIL FROM:<a@b>\r\n", 0)]);
        assert_eq!(
            sessions[0].opening,
            Opening::NoHelo(NoHeloCause::OtherCommandFirst {
                escaped_line: "MAIL FROM:<a@b>".into()
            })
        );
    }

    #[test]
    fn cap_without_helo_is_no_helo_and_late_segments_are_ignored() {
        let mut r = Reassembler::new(Limits::default());
        let k = key(7);
        let mut events: Vec<_> = (0..31)
            .map(|i| event(k, i, b"x", flags::CONTINUATION))
            .collect();
        assert!(feed(&mut r, &events).is_empty());
        events = vec![event(k, 31, b"x", flags::CAPPED | flags::FINAL)];
        let sessions = feed(&mut r, &events);
        assert_eq!(
            sessions[0].opening,
            Opening::NoHelo(NoHeloCause::CapExceeded)
        );
        assert!(feed(&mut r, &[event(k, 32, b"\r\n", 0)]).is_empty());
    }

    #[test]
    fn a_reused_four_tuple_is_a_new_flow() {
        let mut r = Reassembler::new(Limits::default());
        let k = key(8);
        assert_eq!(
            feed(&mut r, &[event(k, 0, b"HELO a.example\r\n", 0)]).len(),
            1
        );
        let mut second = event(k, 0, b"HELO b.example\r\n", 0);
        second.stream_start_seq = 5_000;
        second.seq = 5_000;
        let sessions = feed(&mut r, &[second]);
        assert_eq!(helo(&sessions[0]).argument, b"b.example");
    }

    #[test]
    fn flows_are_bounded_and_expire() {
        let limits = Limits {
            max_flows: 2,
            flow_timeout: Duration::from_secs(10),
        };
        let mut r = Reassembler::new(limits);
        let now = Instant::now();
        for port in 10..13 {
            let (session, evicted) = r.push(&event(key(port), 0, b"HEL", 0), now);
            assert!(session.is_none());
            assert_eq!(evicted, usize::from(port == 12));
        }
        assert_eq!(r.flows_in_progress(), 2);
        assert_eq!(r.expire(now + Duration::from_secs(5)), 0);
        assert_eq!(r.expire(now + Duration::from_secs(11)), 2);
        assert_eq!(r.flows_in_progress(), 0);
    }

    #[test]
    fn ipv6_addresses() {
        let mut k = key(9);
        k.family = FAMILY_IPV6;
        k.saddr = "2001:db8:1::10".parse::<Ipv6Addr>().unwrap().octets();
        k.daddr = "2001:db8:25::25".parse::<Ipv6Addr>().unwrap().octets();
        let mut r = Reassembler::new(Limits::default());
        let sessions = feed(&mut r, &[event(k, 0, b"EHLO x.example.net\r\n", 0)]);
        assert_eq!(sessions[0].client, "[2001:db8:1::10]:9".parse().unwrap());
    }
}
