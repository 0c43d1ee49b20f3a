//! Per-source reputation: a score per IPv4 /32 or IPv6 /64, raised by rejected sessions,
//! lowered by accepted ones, decaying with a half-life. A source whose score reaches the
//! threshold is denied for a while (the daemon puts it into the kernel's deny map).
//!
//! The scoring table (`Reputation::delta`), after the spec's "Soft checks": only a rejected
//! session raises its source's score, by its weight plus the soft score it carried; an
//! accepted session, whatever its soft score, counts as clean and takes `clean_credit` off.
//! RFC 5321 §4.1.4 forbids refusing mail because the HELO does not match the client, and a
//! denial built from accepted mismatches would do exactly that. An operator may opt in to
//! counting accepted soft scores with `soft_score_weight` (w > 0): an accept with soft
//! score s > 0 then adds w × s instead of taking the credit off.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::{
    config::ReputationSection,
    policy::{Reason, Verdict},
};

#[derive(Clone, Debug)]
pub struct ReputationSettings {
    /// A source is denied when its score reaches this.
    pub threshold: f64,
    /// Scores halve in this time.
    pub half_life: Duration,
    /// How long a denial lasts.
    pub deny_ttl: Duration,
    /// Denied sources at most; past it the lowest scores are let go first.
    pub max_denied: usize,
    /// Added by a reject (on top of the verdict's soft score), unless its primary reason
    /// has a weight in `reason_weights`.
    pub reject_weight: f64,
    pub reason_weights: HashMap<Reason, f64>,
    /// Taken off by an accepted session (with `soft_score_weight` above 0, only by one with
    /// no soft score).
    pub clean_credit: f64,
    /// Opt-in: an accept with soft score s > 0 adds this × s instead of counting as clean.
    /// 0 (the default) follows the spec: accepted sessions never raise a score.
    pub soft_score_weight: f64,
    /// What a reject counts of its weight: 1, or `[reputation] reply_weight` under action
    /// `reply` (see [`ReputationSettings::replying`]).
    pub reject_factor: f64,
}

impl ReputationSettings {
    /// The settings of a daemon whose rejects are answered with the 550 (action `reply`):
    /// each counts `reply_weight` of its weight.
    pub fn replying(self, reply_weight: f64) -> Self {
        ReputationSettings {
            reject_factor: reply_weight,
            ..self
        }
    }
}

/// What a clean session takes off its source's score.
const CLEAN_CREDIT: f64 = 1.0;

impl From<&ReputationSection> for ReputationSettings {
    /// The section's values (checked by the configuration's validation).
    fn from(section: &ReputationSection) -> Self {
        ReputationSettings {
            threshold: section.threshold,
            half_life: Duration::from_secs(section.half_life_secs),
            deny_ttl: Duration::from_secs(section.deny_ttl_secs),
            max_denied: section.max_denied,
            reject_weight: section.reject_weight,
            reason_weights: section
                .weights
                .entries()
                .into_iter()
                .filter_map(|(reason, weight)| Some((reason, weight?)))
                .collect(),
            clean_credit: CLEAN_CREDIT,
            soft_score_weight: section.soft_score_weight,
            reject_factor: 1.0,
        }
    }
}

impl Default for ReputationSettings {
    /// The defaults of `[reputation]`.
    fn default() -> Self {
        ReputationSettings::from(&ReputationSection::default())
    }
}

#[derive(Clone, Copy, Debug)]
struct Score {
    value: f64,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Denial {
    until: Instant,
    score: f64,
}

/// What a sweep took out of the deny list.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    pub expired: Vec<IpNet>,
    /// Let go because the list was over its cap (lowest scores first).
    pub evicted: Vec<IpNet>,
}

pub struct Reputation {
    settings: ReputationSettings,
    scores: DashMap<IpNet, Score>,
    denied: DashMap<IpNet, Denial>,
}

/// The unit a score belongs to: the address for IPv4, its /64 for IPv6 (one host's
/// usual allocation).
pub fn source_of(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new(v4, 32).expect("a /32")),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new(v6, 64).expect("a /64").trunc()),
    }
}

impl Reputation {
    pub fn new(settings: ReputationSettings) -> Self {
        Reputation {
            settings,
            scores: DashMap::new(),
            denied: DashMap::new(),
        }
    }

    pub fn settings(&self) -> &ReputationSettings {
        &self.settings
    }

    fn decayed(&self, score: Score, now: Instant) -> f64 {
        self.decay(score.value, now.saturating_duration_since(score.at))
    }

    /// What `value` has become after `elapsed`.
    fn decay(&self, value: f64, elapsed: Duration) -> f64 {
        value * 0.5f64.powf(elapsed.as_secs_f64() / self.settings.half_life.as_secs_f64())
    }

    /// The source's score at `now`.
    pub fn score(&self, source: IpNet, now: Instant) -> f64 {
        self.scores
            .get(&source)
            .map_or(0.0, |s| self.decayed(*s, now))
    }

    /// What a verdict does to its source's score:
    ///
    /// | verdict (soft score s)   | change                                                  |
    /// |--------------------------|---------------------------------------------------------|
    /// | reject                   | + f × ((its primary reason's weight, else `reject_weight`) + s) |
    /// | accept, s = 0            | − `clean_credit`                                        |
    /// | accept, s > 0, w = 0     | − `clean_credit` (counts as clean: the default)         |
    /// | accept, s > 0, w > 0     | + w × s (w: the opt-in `soft_score_weight`)             |
    ///
    /// (f: `reject_factor`, 1 unless the rejects are replied to.)
    pub fn delta(&self, verdict: &Verdict) -> f64 {
        let soft = f64::from(verdict.score);
        if verdict.is_reject() {
            let weight = verdict
                .primary()
                .and_then(|reason| self.settings.reason_weights.get(&reason))
                .copied()
                .unwrap_or(self.settings.reject_weight);
            (weight + soft) * self.settings.reject_factor
        } else if verdict.score > 0 && self.settings.soft_score_weight > 0.0 {
            self.settings.soft_score_weight * soft
        } else {
            -self.settings.clean_credit
        }
    }

    /// Records a verdict for the client; returns its source when it has just crossed the
    /// threshold and must be denied.
    pub fn record(&self, client: IpAddr, verdict: &Verdict, now: Instant) -> Option<IpNet> {
        let source = source_of(client);
        let delta = self.delta(verdict);
        let value = {
            let mut entry = self.scores.entry(source).or_insert(Score {
                value: 0.0,
                at: now,
            });
            let value = (self.decayed(*entry, now) + delta).max(0.0);
            *entry = Score { value, at: now };
            value
        };
        if value <= 0.0 {
            self.scores.remove(&source);
        }
        if value >= self.settings.threshold && !self.denied.contains_key(&source) {
            let until = now + self.settings.deny_ttl;
            self.denied.insert(
                source,
                Denial {
                    until,
                    score: value,
                },
            );
            return Some(source);
        }
        None
    }

    /// Sources with a non-zero score.
    pub fn sources(&self) -> usize {
        self.scores.len()
    }

    /// Sources currently denied by reputation.
    pub fn denied(&self) -> usize {
        self.denied.len()
    }

    /// Ends expired denials, forgets scores that decayed to (almost) nothing, and enforces
    /// the cap on denials, lowest score first.
    pub fn sweep(&self, now: Instant) -> Released {
        let mut released = Released::default();
        self.denied.retain(|source, denial| {
            let live = denial.until > now;
            if !live {
                released.expired.push(*source);
            }
            live
        });
        self.scores
            .retain(|_, score| self.decayed(*score, now) >= 0.01);
        let excess = self.denied.len().saturating_sub(self.settings.max_denied);
        if excess > 0 {
            let mut by_score: Vec<(IpNet, f64)> =
                self.denied.iter().map(|d| (*d.key(), d.score)).collect();
            by_score.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (source, _) in by_score.into_iter().take(excess) {
                self.denied.remove(&source);
                released.evicted.push(source);
            }
        }
        released
    }

    /// Whether the source is on reputation's deny list.
    pub fn is_denied(&self, source: IpNet) -> bool {
        self.denied.contains_key(&source)
    }

    /// One source's score and denial at `now` (zero and none for a source unknown here),
    /// without listing every source as `list` does.
    pub fn state(&self, source: IpNet, now: Instant) -> SourceState {
        SourceState {
            source,
            score: self.score(source, now),
            denied_for: self
                .denied
                .get(&source)
                .map(|d| d.until.saturating_duration_since(now)),
        }
    }

    /// Every source with a score or a denial at `now`, highest score first.
    pub fn list(&self, now: Instant) -> Vec<SourceState> {
        let mut all: HashMap<IpNet, SourceState> = HashMap::new();
        for entry in self.scores.iter() {
            all.insert(
                *entry.key(),
                SourceState {
                    source: *entry.key(),
                    score: self.decayed(*entry.value(), now),
                    denied_for: None,
                },
            );
        }
        for entry in self.denied.iter() {
            let state = all.entry(*entry.key()).or_insert(SourceState {
                source: *entry.key(),
                score: 0.0,
                denied_for: None,
            });
            state.denied_for = Some(entry.until.saturating_duration_since(now));
        }
        let mut list: Vec<SourceState> = all.into_values().collect();
        list.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.source.cmp(&b.source)));
        list
    }

    /// Forgets a source's score and denial; returns whether it had any.
    pub fn reset(&self, source: IpNet) -> bool {
        let scored = self.scores.remove(&source).is_some();
        let denied = self.denied.remove(&source).is_some();
        scored || denied
    }

    /// Restores a source (from a snapshot, or a denial found in the kernel after a
    /// restart): its score as it was `age` ago, and its denial for `denied_for` more.
    pub fn restore(
        &self,
        source: IpNet,
        score: f64,
        age: Duration,
        denied_for: Option<Duration>,
        now: Instant,
    ) {
        let score = self.decay(score, age);
        if score > 0.0 {
            self.scores.insert(
                source,
                Score {
                    value: score,
                    at: now,
                },
            );
        }
        if let Some(left) = denied_for {
            self.denied.insert(
                source,
                Denial {
                    until: now + left,
                    score,
                },
            );
        }
    }
}

/// One source as `reputation list` shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceState {
    pub source: IpNet,
    pub score: f64,
    /// How long its denial still lasts.
    pub denied_for: Option<Duration>,
}

/// One source in a reputation snapshot (`reputation.json` in the state directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    pub source: IpNet,
    /// The score when the snapshot was taken.
    pub score: f64,
    /// Unix time its denial ends, if denied.
    pub denied_until: Option<u64>,
}

/// Reputation as written to disk, so that a restart keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReputationSnapshot {
    /// Unix time of the snapshot (scores decay from it).
    pub taken_at: u64,
    pub sources: Vec<SourceRecord>,
}

impl Reputation {
    /// Every source at `now` (Unix time `unix`), as a snapshot. A denial keeps at least a
    /// second, so that it is not lost by rounding.
    pub fn snapshot(&self, now: Instant, unix: u64) -> ReputationSnapshot {
        let sources = self
            .list(now)
            .into_iter()
            .map(|s| SourceRecord {
                source: s.source,
                score: s.score,
                denied_until: s.denied_for.map(|d| unix + d.as_secs().max(1)),
            })
            .collect();
        ReputationSnapshot {
            taken_at: unix,
            sources,
        }
    }

    /// Takes a snapshot back at `now` (Unix time `unix`): scores decayed for the snapshot's
    /// age, denials for the time they have left (those that ran out are not restored).
    pub fn restore_snapshot(&self, snapshot: &ReputationSnapshot, now: Instant, unix: u64) {
        let age = Duration::from_secs(unix.saturating_sub(snapshot.taken_at));
        for record in &snapshot.sources {
            let denied_for = record
                .denied_until
                .filter(|until| *until > unix)
                .map(|until| Duration::from_secs(until - unix));
            self.restore(record.source, record.score, age, denied_for, now);
        }
    }

    /// A reputation denial found in the kernel that no snapshot knew of (made after the last
    /// one): kept for the time it has `left`, its source at the threshold.
    pub fn adopt_denial(&self, source: IpNet, left: Duration, now: Instant) {
        self.restore(
            source,
            self.settings.threshold,
            Duration::ZERO,
            Some(left),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, Verdict};

    fn verdict(reject: bool, score: u32) -> Verdict {
        Verdict {
            decision: if reject {
                Decision::Reject
            } else {
                Decision::Accept
            },
            reasons: Vec::new(),
            notes: Vec::new(),
            score,
            dns_error: None,
        }
    }

    fn settings() -> ReputationSettings {
        ReputationSettings {
            threshold: 5.0,
            half_life: Duration::from_secs(60),
            deny_ttl: Duration::from_secs(30),
            max_denied: 2,
            reject_weight: 2.0,
            reason_weights: HashMap::new(),
            clean_credit: 1.0,
            soft_score_weight: 0.0,
            reject_factor: 1.0,
        }
    }

    /// Under action `reply` a reject counts `reply_weight` of its weight: a sender that
    /// stops after three 550s is not denied; one that keeps coming still is.
    #[test]
    fn replied_rejects_weigh_their_fraction() {
        let r = Reputation::new(settings().replying(0.25));
        assert_eq!(r.delta(&verdict(true, 0)), 0.5, "reject");
        assert_eq!(r.delta(&verdict(true, 2)), 1.0, "reject with a soft score");
        assert_eq!(r.delta(&verdict(false, 0)), -1.0, "clean accept: unchanged");
        let ip: IpAddr = "203.0.113.10".parse().unwrap();
        let now = Instant::now();
        for message in 1..=3 {
            assert_eq!(
                r.record(ip, &verdict(true, 0), now),
                None,
                "message {message}"
            );
        }
        let flood = (4..=10).find_map(|n| r.record(ip, &verdict(true, 0), now).map(|_| n));
        assert_eq!(flood, Some(10), "denied at the tenth reject");
    }

    #[test]
    fn the_scoring_table() {
        let r = Reputation::new(settings());
        assert_eq!(r.delta(&verdict(true, 0)), 2.0, "reject");
        assert_eq!(r.delta(&verdict(true, 2)), 4.0, "reject with a soft score");
        assert_eq!(
            r.delta(&verdict(false, 2)),
            -1.0,
            "accept with a soft score"
        );
        assert_eq!(r.delta(&verdict(false, 0)), -1.0, "clean accept");

        let opt_in = Reputation::new(ReputationSettings {
            soft_score_weight: 1.5,
            ..settings()
        });
        assert_eq!(opt_in.delta(&verdict(true, 0)), 2.0, "opt-in: reject");
        assert_eq!(
            opt_in.delta(&verdict(true, 2)),
            4.0,
            "opt-in: a reject's soft score is not weighted"
        );
        assert_eq!(
            opt_in.delta(&verdict(false, 2)),
            3.0,
            "opt-in: accept with a soft score"
        );
        assert_eq!(
            opt_in.delta(&verdict(false, 0)),
            -1.0,
            "opt-in: clean accept"
        );
    }

    #[test]
    fn accepted_sessions_never_lead_to_a_denial() {
        let r = Reputation::new(settings());
        let now = Instant::now();
        let ip: IpAddr = "203.0.113.11".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(r.record(ip, &verdict(false, 2), now), None);
        }
        assert_eq!(r.score(source_of(ip), now), 0.0);
        assert_eq!((r.sources(), r.denied()), (0, 0));
        // An earlier reject is worked off by accepted sessions, soft scores or not.
        r.record(ip, &verdict(true, 2), now);
        r.record(ip, &verdict(false, 2), now);
        assert_eq!(r.score(source_of(ip), now), 3.0);

        let opt_in = Reputation::new(ReputationSettings {
            soft_score_weight: 1.0,
            ..settings()
        });
        assert_eq!(opt_in.record(ip, &verdict(false, 2), now), None);
        assert_eq!(opt_in.record(ip, &verdict(false, 2), now), None);
        assert_eq!(
            opt_in.record(ip, &verdict(false, 2), now),
            Some(source_of(ip)),
            "opt-in: three accepts with score 2 reach 5"
        );
    }

    #[test]
    fn a_reason_can_weigh_more_than_the_default() {
        let mut s = settings();
        s.reason_weights.insert(Reason::NoHelo, 5.0);
        let r = Reputation::new(s);
        let now = Instant::now();
        let mut v = verdict(true, 0);
        v.reasons.push(crate::policy::Finding {
            reason: Reason::NoHelo,
            explanation: String::new(),
        });
        let ip: IpAddr = "203.0.113.14".parse().unwrap();
        assert_eq!(
            r.record(ip, &v, now),
            Some(source_of(ip)),
            "one no_helo is enough"
        );
    }

    #[test]
    fn repeated_rejects_cross_the_threshold_once() {
        let r = Reputation::new(settings());
        let now = Instant::now();
        let ip: IpAddr = "203.0.113.12".parse().unwrap();
        assert_eq!(r.record(ip, &verdict(true, 0), now), None);
        assert_eq!(r.record(ip, &verdict(true, 0), now), None);
        assert_eq!(r.record(ip, &verdict(true, 1), now), Some(source_of(ip)));
        assert_eq!(r.record(ip, &verdict(true, 0), now), None, "already denied");
        assert_eq!(r.denied(), 1);
        assert_eq!(r.score(source_of(ip), now), 9.0);
    }

    #[test]
    fn one_sources_state_agrees_with_the_list() {
        let r = Reputation::new(settings());
        let now = Instant::now();
        let denied: IpAddr = "203.0.113.12".parse().unwrap();
        let scored: IpAddr = "203.0.113.13".parse().unwrap();
        for _ in 0..3 {
            r.record(denied, &verdict(true, 0), now);
        }
        r.record(scored, &verdict(true, 0), now);
        let later = now + Duration::from_secs(10);
        for state in r.list(later) {
            assert_eq!(r.state(state.source, later), state);
            assert_eq!(r.is_denied(state.source), state.denied_for.is_some());
        }
        assert_eq!(
            r.state(source_of(denied), later).denied_for,
            Some(Duration::from_secs(20))
        );
        let unknown = source_of("203.0.113.14".parse().unwrap());
        assert_eq!(
            r.state(unknown, later),
            SourceState {
                source: unknown,
                score: 0.0,
                denied_for: None
            }
        );
        assert!(!r.is_denied(unknown));
    }

    #[test]
    fn scores_decay_with_the_half_life_and_clean_sessions_lower_them() {
        let r = Reputation::new(settings());
        let now = Instant::now();
        let ip: IpAddr = "203.0.113.13".parse().unwrap();
        r.record(ip, &verdict(true, 2), now);
        assert_eq!(r.score(source_of(ip), now), 4.0);
        let later = now + Duration::from_secs(60);
        assert!((r.score(source_of(ip), later) - 2.0).abs() < 1e-9);
        r.record(ip, &verdict(false, 0), later);
        assert!((r.score(source_of(ip), later) - 1.0).abs() < 1e-9);
        r.record(ip, &verdict(false, 0), later);
        assert_eq!(r.sources(), 0, "a score at zero is forgotten");
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let a: IpAddr = "2001:db8:1::10".parse().unwrap();
        let b: IpAddr = "2001:db8:1::ffff".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_eq!(source_of(a).to_string(), "2001:db8:1::/64");
    }

    #[test]
    fn denials_expire_and_the_cap_lets_the_lowest_scores_go_first() {
        let r = Reputation::new(settings());
        let now = Instant::now();
        let ips: Vec<IpAddr> = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        // Scores 6, 8 and 10: all cross the threshold of 5.
        for (i, ip) in ips.iter().enumerate() {
            r.record(*ip, &verdict(true, 4 + 2 * i as u32), now);
        }
        assert_eq!(r.denied(), 3);
        let released = r.sweep(now);
        assert_eq!(
            released.evicted,
            vec![source_of(ips[0])],
            "lowest score first"
        );
        assert!(released.expired.is_empty());
        let released = r.sweep(now + Duration::from_secs(31));
        assert_eq!(released.expired.len(), 2);
        assert_eq!(r.denied(), 0);
    }

    /// Regression test for 6d34295: a snapshot's scores are decayed for its age by the same
    /// formula as live scores, once. A source restored from a snapshot taken `age` ago has
    /// the score the live source has `age` later, and keeps decaying at the same rate; a
    /// denial comes back with the time it has left, one that ran out does not.
    #[test]
    fn a_restored_snapshot_decays_like_a_live_score_once() {
        let live = Reputation::new(settings());
        let now = Instant::now();
        let unix = 1_700_000_000;
        let (a, b): (IpAddr, IpAddr) = (
            "203.0.113.21".parse().unwrap(),
            "2001:db8:1::21".parse().unwrap(),
        );
        live.record(a, &verdict(true, 6), now); // 8: denied for 30 s
        live.record(b, &verdict(true, 1), now); // 3
        let snapshot = live.snapshot(now, unix);
        assert_eq!(snapshot.taken_at, unix);

        for age in [0u64, 10, 60, 90, 600] {
            let restored = Reputation::new(settings());
            let later = now + Duration::from_secs(age);
            restored.restore_snapshot(&snapshot, later, unix + age);
            for ip in [a, b] {
                let (want, got) = (
                    live.score(source_of(ip), later),
                    restored.score(source_of(ip), later),
                );
                assert!(
                    (got - want).abs() < 1e-9,
                    "{ip} after {age} s: restored {got}, live {want}"
                );
            }
            // After another half-life both have halved again.
            let then = later + Duration::from_secs(60);
            let got = restored.score(source_of(a), then);
            assert!(
                (got - live.score(source_of(a), then)).abs() < 1e-9,
                "{age} s + one half-life: {got}"
            );
            // Numbers from the formula itself: 8 halves every 60 s.
            let expected = 8.0 * 0.5f64.powf((age + 60) as f64 / 60.0);
            assert!(
                (got - expected).abs() < 1e-9,
                "{age} s + one half-life: {got}, want {expected}"
            );
            let denied: Vec<_> = restored
                .list(later)
                .into_iter()
                .filter_map(|s| Some((s.source, s.denied_for?)))
                .collect();
            if age < 30 {
                assert_eq!(
                    denied,
                    [(source_of(a), Duration::from_secs(30 - age))],
                    "{age} s"
                );
            } else {
                assert!(
                    denied.is_empty(),
                    "a denial that ran out {age} s later came back: {denied:?}"
                );
            }
        }

        // A denial adopted from the kernel is at the threshold now, not decayed.
        let adopted = Reputation::new(settings());
        adopted.adopt_denial(source_of(a), Duration::from_secs(7), now);
        assert_eq!(adopted.score(source_of(a), now), 5.0);
        assert_eq!(
            adopted.list(now)[0].denied_for,
            Some(Duration::from_secs(7))
        );
    }
}
