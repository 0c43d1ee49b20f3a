//! What the fleet keeps in Redis and says on its channel. A denial is one key,
//! `PREFIX:denial:NET`, holding its JSON and expiring with it (Redis's own TTL, so an entry
//! nobody lifts still goes); changes are announced on `PREFIX:denials`. The keys are the
//! state, the channel only wakes the members up: a member that missed announcements (Redis
//! or its link down) reads the keys again when it reconnects. Streams would keep a second
//! copy of that state with a trimming policy of its own; pub/sub plus the keys keeps one.
//! Expiries travel as Unix times (members' clocks are kept by NTP).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why a member denied a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialKind {
    /// Its reputation crossed the threshold.
    Reputation,
    /// An operator's `deny add --fleet`.
    Operator,
}

impl DenialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Reputation => "reputation",
            DenialKind::Operator => "operator",
        }
    }
}

/// One shared denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub net: IpNet,
    pub kind: DenialKind,
    /// Unix time it ends at.
    pub expires_at: u64,
    /// The member that made it.
    pub member: String,
    /// Unix time in milliseconds it was made at (the propagation latency is measured from
    /// it).
    pub made_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// What goes on the channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Announcement {
    Added { denial: Denial },
    Lifted { net: IpNet, member: String },
}

/// Key and channel names of one fleet.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    pub fn denial(&self, net: IpNet) -> String {
        format!("{}:denial:{net}", self.prefix)
    }

    /// The pattern every denial key matches (for SCAN).
    pub fn denials(&self) -> String {
        format!("{}:denial:*", self.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}:denials", self.prefix)
    }

    /// A member's liveness key (it expires unless the member refreshes it).
    pub fn member(&self, name: &str) -> String {
        format!("{}:member:{name}", self.prefix)
    }

    pub fn members(&self) -> String {
        format!("{}:member:*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_back_as_sent() {
        let denial = Denial {
            net: "203.0.113.10/32".parse().unwrap(),
            kind: DenialKind::Reputation,
            expires_at: 1_800_000_000,
            member: "mx1".to_owned(),
            made_at_ms: 1_799_996_400_000,
            comment: None,
        };
        let added = Announcement::Added {
            denial: denial.clone(),
        };
        let text = serde_json::to_string(&added).unwrap();
        assert!(
            text.starts_with(r#"{"op":"added","denial":{"net":"203.0.113.10/32""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Announcement>(&text).unwrap(), added);
        let names = Names::new("fleet-a");
        assert_eq!(names.denial(denial.net), "fleet-a:denial:203.0.113.10/32");
        assert_eq!(names.channel(), "fleet-a:denials");
        assert_eq!(names.member("mx1"), "fleet-a:member:mx1");
    }
}
