//! The known-good cache, after postscreen's temporary allow list: a source whose last
//! `after` sessions in a row were accepted is written into the kernel's `KNOWN_GOOD` map
//! for a while, and its flows are no longer gated: a client fast enough to send its next
//! command before the verdict no longer waits for TCP's retransmission. Its HELO is still
//! judged and logged; a reject ends its standing, and is acted on with `rst` (its command
//! may have reached the MTA, so `reply` cannot answer it: see `enforce`).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use helo_filter_common::{FAMILY_IPV4, FAMILY_IPV6, known_good_key};
use ipnet::IpNet;
use log::warn;
use parking_lot::Mutex;

use crate::{
    clock::boot_time_ns,
    metrics::{self, KnownGoodEvent},
    pipeline::reputation::source_of,
};

/// Sources whose accepted sessions are counted at once; when full, the counts start over.
const COUNTED_SOURCES: usize = 65_536;

/// When a source becomes known-good, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownGoodSettings {
    /// Accepted sessions in a row.
    pub after: u32,
    pub ttl: Duration,
}

pub struct KnownGood {
    settings: KnownGoodSettings,
    /// Accepted sessions in a row, per source (/32, /64).
    passes: Mutex<HashMap<IpNet, u32>>,
    kernel: Mutex<BpfHashMap<MapData, [u8; 16], u64>>,
}

impl KnownGood {
    pub fn new(settings: KnownGoodSettings, kernel: BpfHashMap<MapData, [u8; 16], u64>) -> Self {
        KnownGood {
            settings,
            passes: Mutex::new(HashMap::new()),
            kernel: Mutex::new(kernel),
        }
    }

    /// Counts a verdict for `client`'s source, whose session was `gated` or not: its
    /// `after`-th accept in a row makes it known-good (each later one extends that), a
    /// reject ends both.
    pub fn record(&self, client: IpAddr, gated: bool, accepted: bool) {
        let source = source_of(client);
        let key = kernel_key(client);
        if !accepted {
            let was_counted = self.passes.lock().remove(&source).is_some();
            // A source can stand in the kernel only if it was counted here or its session
            // went ungated (a standing from before a restart): a flood of unknown bogus
            // sources costs no map syscall.
            if !was_counted && gated {
                return;
            }
            match self.kernel.lock().remove(&key) {
                Ok(()) => metrics::known_good(KnownGoodEvent::Ended),
                Err(MapError::KeyNotFound) => {}
                Err(e) => warn!("{source}: cannot end its known-good standing: {e}"),
            }
            return;
        }
        let passes = {
            let mut passes = self.passes.lock();
            if passes.len() >= COUNTED_SOURCES && !passes.contains_key(&source) {
                passes.clear();
            }
            let count = passes.entry(source).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        if passes < self.settings.after {
            return;
        }
        let until = boot_time_ns().saturating_add(self.settings.ttl.as_nanos() as u64);
        let mut kernel = self.kernel.lock();
        let known = kernel.get(&key, 0).is_ok();
        match kernel.insert(key, until, 0) {
            Ok(()) if !known => metrics::known_good(KnownGoodEvent::Added),
            Ok(()) => {}
            Err(e) => warn!("{source}: cannot write it into the known-good map: {e}"),
        }
    }
}

/// The source's key in `KNOWN_GOOD`, as the kernel computes it from the flow.
fn kernel_key(client: IpAddr) -> [u8; 16] {
    match client {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            known_good_key(FAMILY_IPV4, &addr)
        }
        IpAddr::V6(v6) => known_good_key(FAMILY_IPV6, &v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_keys_are_the_tries_addresses_with_ipv6_cut_to_its_64() {
        let v4 = kernel_key("203.0.113.7".parse().expect("v4"));
        assert_eq!(v4[10..], [0xFF, 0xFF, 203, 0, 113, 7]);
        assert_eq!(v4[..10], [0; 10]);
        let a = kernel_key("2001:db8:1:2::10".parse().expect("v6"));
        let b = kernel_key("2001:db8:1:2:ffff::1".parse().expect("v6"));
        assert_eq!(a, b, "one /64");
        assert_eq!(a[8..], [0; 8]);
    }
}
