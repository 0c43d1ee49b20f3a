//! A TTL cache with a cap on entries. When full, the entry that expires first is evicted
//! (expired entries therefore go first).

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    time::Instant,
};

struct Slot<V> {
    value: V,
    expires: Instant,
    seq: u64,
}

/// Entries valid until their own deadline, at most `cap` of them.
pub struct TtlCache<K, V> {
    map: HashMap<K, Slot<V>>,
    by_expiry: BTreeMap<(Instant, u64), K>,
    cap: usize,
    seq: u64,
}

impl<K: Clone + Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `cap` entries (0 disables caching).
    pub fn new(cap: usize) -> Self {
        TtlCache {
            map: HashMap::new(),
            by_expiry: BTreeMap::new(),
            cap,
            seq: 0,
        }
    }

    /// The value, if present and not expired at `now`.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        let slot = self.map.get(key)?;
        if slot.expires > now {
            return Some(slot.value.clone());
        }
        let seq = slot.seq;
        let expires = slot.expires;
        self.by_expiry.remove(&(expires, seq));
        self.map.remove(key);
        None
    }

    /// Stores a value until `expires`; a value already expired is not stored.
    pub fn insert(&mut self, key: K, value: V, expires: Instant, now: Instant) {
        if self.cap == 0 || expires <= now {
            return;
        }
        if let Some(old) = self.map.remove(&key) {
            self.by_expiry.remove(&(old.expires, old.seq));
        }
        while self.map.len() >= self.cap {
            let Some((_, victim)) = self.by_expiry.pop_first() else {
                break;
            };
            self.map.remove(&victim);
        }
        self.seq += 1;
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.map.insert(
            key,
            Slot {
                value,
                expires,
                seq: self.seq,
            },
        );
    }

    /// Number of entries (expired ones not yet evicted included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn expiry_and_cap() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = TtlCache::new(2);
        c.insert("a", 1, now + 10 * s, now);
        c.insert("b", 2, now + 5 * s, now);
        assert_eq!(c.get(&"a", now), Some(1));
        assert_eq!(c.get(&"b", now + 6 * s), None, "expired");
        c.insert("b", 2, now + 5 * s, now);
        c.insert("c", 3, now + 20 * s, now);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"b", now), None, "the soonest to expire was evicted");
        assert_eq!(c.get(&"a", now), Some(1));
        assert_eq!(c.get(&"c", now), Some(3));
        c.insert("d", 4, now, now);
        assert_eq!(c.get(&"d", now), None, "a zero TTL is not cached");
        let mut off = TtlCache::new(0);
        off.insert("a", 1, now + s, now);
        assert!(off.is_empty());
    }

    #[test]
    fn replacing_keeps_one_entry() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = TtlCache::new(4);
        c.insert("a", 1, now + s, now);
        c.insert("a", 2, now + 2 * s, now);
        assert_eq!(c.len(), 1);
        assert_eq!(c.by_expiry.len(), 1);
        assert_eq!(c.get(&"a", now), Some(2));
    }
}
