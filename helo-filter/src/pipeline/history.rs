//! The latest verdicts, kept for the operator: the last [`RECENT_FLOWS`] of all (`flows`),
//! and the last [`PER_SOURCE`] of each of the last [`SOURCES`] client addresses seen
//! (`explain`), so that a source's sessions are still there after a busy hour of others.
//! Both bounded: a flood of new addresses evicts the addresses first seen longest ago.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use parking_lot::Mutex;
use serde::Serialize;

/// Verdicts `helo-filter flows` can show.
const RECENT_FLOWS: usize = 256;
/// Sessions `helo-filter explain` shows per address.
pub const PER_SOURCE: usize = 8;
/// Addresses whose sessions are kept.
const SOURCES: usize = 4_096;

/// One judged session, as `helo-filter flows` and `explain` show it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowRecord {
    /// Unix time of the verdict.
    pub at: u64,
    /// The client's address and port.
    pub client: SocketAddr,
    pub server: String,
    /// `HELO`, `EHLO`, or `none` for a session without one.
    pub verb: &'static str,
    /// The command line, escaped.
    pub line: String,
    pub verdict: &'static str,
    pub reasons: Vec<&'static str>,
    pub score: u32,
    pub action: &'static str,
}

#[derive(Default)]
struct Rings {
    recent: VecDeque<FlowRecord>,
    by_source: HashMap<IpAddr, VecDeque<FlowRecord>>,
    /// The addresses in `by_source`, first seen first: the next to be let go.
    sources_in_order: VecDeque<IpAddr>,
}

/// The verdict history (one lock: a verdict is recorded in both rings at once).
#[derive(Default)]
pub struct History(Mutex<Rings>);

/// Appends to a ring of at most `cap` records.
fn push_capped(ring: &mut VecDeque<FlowRecord>, record: FlowRecord, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(record);
}

impl History {
    pub fn record(&self, record: FlowRecord) {
        let mut rings = self.0.lock();
        let rings = &mut *rings;
        let client = record.client.ip();
        if !rings.by_source.contains_key(&client) {
            if rings.sources_in_order.len() == SOURCES
                && let Some(oldest) = rings.sources_in_order.pop_front()
            {
                rings.by_source.remove(&oldest);
            }
            rings.sources_in_order.push_back(client);
        }
        let ring = rings.by_source.entry(client).or_default();
        push_capped(ring, record.clone(), PER_SOURCE);
        push_capped(&mut rings.recent, record, RECENT_FLOWS);
    }

    /// The latest verdicts of all, newest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<FlowRecord> {
        self.0
            .lock()
            .recent
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The latest verdicts of one client address, newest first.
    pub fn of(&self, client: IpAddr) -> Vec<FlowRecord> {
        self.0
            .lock()
            .by_source
            .get(&client)
            .map(|ring| ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn record(client: IpAddr, at: u64) -> FlowRecord {
        FlowRecord {
            at,
            client: SocketAddr::new(client, 40_000),
            server: "198.51.100.1:25".to_owned(),
            verb: "EHLO",
            line: "EHLO localhost".to_owned(),
            verdict: "reject",
            reasons: vec!["localhost"],
            score: 100,
            action: "reply",
        }
    }

    fn addr(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + n))
    }

    #[test]
    fn a_source_keeps_its_last_sessions_newest_first() {
        let history = History::default();
        for at in 0..(PER_SOURCE as u64 + 3) {
            history.record(record(addr(1), at));
            history.record(record(addr(2), at));
        }
        let kept: Vec<u64> = history.of(addr(1)).iter().map(|r| r.at).collect();
        let expected: Vec<u64> = (3..PER_SOURCE as u64 + 3).rev().collect();
        assert_eq!(kept, expected);
        assert_eq!(history.recent(3).len(), 3);
        assert_eq!(history.recent(3)[0].client.ip(), addr(2));
        assert!(history.of(addr(3)).is_empty());
    }

    #[test]
    fn a_flood_of_new_addresses_evicts_the_first_seen() {
        let history = History::default();
        for n in 0..=SOURCES as u32 {
            history.record(record(addr(n), u64::from(n)));
        }
        assert!(history.of(addr(0)).is_empty(), "the first address stays");
        assert_eq!(history.of(addr(1)).len(), 1);
        assert_eq!(history.of(addr(SOURCES as u32)).len(), 1);
        assert_eq!(history.recent(usize::MAX).len(), RECENT_FLOWS);
    }
}
