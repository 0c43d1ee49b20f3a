//! The fleet's denials this member holds: at most `[fleet] max_denied`, the earliest to
//! expire let go first; on the same prefix the longer expiry wins.

use std::collections::HashMap;

use ipnet::IpNet;

use super::wire::Denial;

/// What taking a denial changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Held now (new, or a longer expiry than the one held); `evicted` made room for it.
    Held { evicted: Option<IpNet> },
    /// Not held: a denial of the same prefix lasts as long or longer, or the table is full
    /// of denials that last longer.
    Ignored,
}

pub struct Held {
    by_net: HashMap<IpNet, Denial>,
    cap: usize,
}

impl Held {
    pub fn new(cap: usize) -> Held {
        Held {
            by_net: HashMap::new(),
            cap,
        }
    }

    pub fn take(&mut self, denial: Denial) -> Taken {
        if let Some(held) = self.by_net.get(&denial.net) {
            if held.expires_at >= denial.expires_at {
                return Taken::Ignored;
            }
            self.by_net.insert(denial.net, denial);
            return Taken::Held { evicted: None };
        }
        let mut evicted = None;
        if self.by_net.len() >= self.cap {
            let Some(earliest) = self
                .by_net
                .values()
                .min_by_key(|d| d.expires_at)
                .filter(|d| d.expires_at < denial.expires_at)
                .map(|d| d.net)
            else {
                return Taken::Ignored;
            };
            self.by_net.remove(&earliest);
            evicted = Some(earliest);
        }
        self.by_net.insert(denial.net, denial);
        Taken::Held { evicted }
    }

    pub fn remove(&mut self, net: IpNet) -> Option<Denial> {
        self.by_net.remove(&net)
    }

    /// Lets go of the denials ended by Unix time `now`; their prefixes.
    pub fn expire(&mut self, now: u64) -> Vec<IpNet> {
        let ended: Vec<IpNet> = self
            .by_net
            .values()
            .filter(|d| d.expires_at <= now)
            .map(|d| d.net)
            .collect();
        for net in &ended {
            self.by_net.remove(net);
        }
        ended
    }

    pub fn get(&self, net: IpNet) -> Option<&Denial> {
        self.by_net.get(&net)
    }

    pub fn all(&self) -> Vec<Denial> {
        self.by_net.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.by_net.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{super::wire::DenialKind, *};

    fn denial(last: u8, expires_at: u64) -> Denial {
        Denial {
            net: format!("203.0.113.{last}/32").parse().unwrap(),
            kind: DenialKind::Reputation,
            expires_at,
            member: "mx1".into(),
            made_at_ms: 0,
            comment: None,
        }
    }

    #[test]
    fn the_longer_expiry_wins_and_the_earliest_goes_first() {
        let mut held = Held::new(2);
        assert_eq!(held.take(denial(1, 100)), Taken::Held { evicted: None });
        assert_eq!(held.take(denial(1, 90)), Taken::Ignored);
        assert_eq!(held.take(denial(1, 150)), Taken::Held { evicted: None });
        assert_eq!(held.take(denial(2, 120)), Taken::Held { evicted: None });
        let evicted = Some("203.0.113.2/32".parse().unwrap());
        assert_eq!(held.take(denial(3, 130)), Taken::Held { evicted });
        assert_eq!(
            held.take(denial(4, 110)),
            Taken::Ignored,
            "it would end first"
        );
        assert_eq!(held.len(), 2);
        assert_eq!(
            held.expire(140),
            vec!["203.0.113.3/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            held.get("203.0.113.1/32".parse().unwrap())
                .map(|d| d.expires_at),
            Some(150)
        );
    }
}
