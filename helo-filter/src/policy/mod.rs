//! The policy engine: judges one HELO/EHLO argument for one client address.
//!
//! Evaluation follows `spec/helo-policy.md`: a trusted client is accepted at once; otherwise every
//! enabled check runs (no short-circuit), the primary reason is the first failed check, in the
//! order of [`Reason::ALL`], whose mode is `reject`, and the score is the sum of the weights of
//! the failed soft checks (and of hard checks an operator set to `score`).
//!
//! The engine is cheap to clone (one `Arc`) and evaluates through `&self` without holding a lock
//! across an await, so the daemon can run many evaluations at once.

use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;

pub mod bundle;
pub mod checks;
pub mod deny;
pub mod reason;
pub mod rfc5321;

#[cfg(test)]
pub(crate) mod corpus_tests;
#[cfg(test)]
mod dns_error_tests;
#[cfg(test)]
mod own_identity_tests;

pub use bundle::{Bundle, CheckMode, CheckTable};
pub use checks::Identity;
use checks::{Answer, DnsFacts, DnsOutcome, Subject};
pub use deny::{DenyList, DenyPattern};
pub use reason::{Note, Reason};

use crate::dns::{DnsAnswer, DnsClient, DnsFailure, RecordKind};

/// One HELO to judge.
#[derive(Clone, Debug)]
pub struct HeloInput {
    /// The argument of HELO/EHLO as the client sent it (the bytes after the verb), or `None`
    /// when the session had no HELO at all.
    pub helo: Option<Vec<u8>>,
    /// The client's address.
    pub client: IpAddr,
    /// The data path saw commands pipelined behind the HELO (reason `pipelining`).
    pub pipelined: bool,
    /// The data path found no HELO/EHLO, or another command before it (reason `no_helo`).
    pub no_helo: bool,
    /// The client's reverse DNS name when the caller already knows it (Postfix's
    /// `client_name`): used instead of a PTR lookup.
    pub reverse_name: Option<String>,
}

impl HeloInput {
    /// A plain HELO argument from a client, with no data-path findings.
    pub fn new(helo: impl Into<Vec<u8>>, client: IpAddr) -> HeloInput {
        HeloInput {
            helo: Some(helo.into()),
            client,
            pipelined: false,
            no_helo: false,
            reverse_name: None,
        }
    }

    /// A session that never sent a HELO.
    pub fn without_helo(client: IpAddr) -> HeloInput {
        HeloInput {
            helo: None,
            client,
            pipelined: false,
            no_helo: true,
            reverse_name: None,
        }
    }

    /// The argument for display (lossy for non-UTF-8 bytes); empty without a HELO.
    pub fn helo_display(&self) -> String {
        self.helo
            .as_deref()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default()
    }
}

/// Accept or reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the session go on.
    Accept,
    /// Turn the client away.
    Reject,
}

impl Decision {
    /// `"accept"` or `"reject"`, as in JSON and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
        }
    }
}

/// One failed check with its specific explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The reason code.
    pub reason: Reason,
    /// What exactly failed, for logs and the `check` command.
    pub explanation: String,
}

/// The outcome of one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Accept or reject.
    pub decision: Decision,
    /// Every failed check; on a reject the primary reason comes first, the rest follow in
    /// reason order. Soft failures are listed on an accept too.
    pub reasons: Vec<Finding>,
    /// Annotations that are not failures.
    pub notes: Vec<Note>,
    /// Sum of the weights of the failed scoring checks.
    pub score: u32,
    /// Which server failed and how, when a temporary DNS failure left its mark on the verdict
    /// (the note or the reason `dns_tempfail`); logged as `dns_error=SERVER:KIND`.
    pub dns_error: Option<DnsFailure>,
}

impl Verdict {
    /// A verdict for a HELO that was not judged (e.g. the daemon's queue was full): accept
    /// with the given note.
    pub fn unjudged(note: Note) -> Verdict {
        Verdict {
            decision: Decision::Accept,
            reasons: Vec::new(),
            notes: vec![note],
            score: 0,
            dns_error: None,
        }
    }

    /// Whether the verdict is a reject.
    pub fn is_reject(&self) -> bool {
        self.decision == Decision::Reject
    }

    /// The reason that names a reject; `None` on an accept.
    pub fn primary(&self) -> Option<Reason> {
        if self.is_reject() {
            self.reasons.first().map(|f| f.reason)
        } else {
            None
        }
    }

    /// The primary reason's code, or `"none"` on an accept (the metric label).
    pub fn primary_label(&self) -> &'static str {
        self.primary().map_or("none", Reason::as_str)
    }

    /// The reason codes in verdict order.
    pub fn reason_codes(&self) -> impl Iterator<Item = Reason> + '_ {
        self.reasons.iter().map(|f| f.reason)
    }

    /// Whether a note is present.
    pub fn has_note(&self, note: Note) -> bool {
        self.notes.contains(&note)
    }

    /// ` dns_error=SERVER:KIND` when a DNS failure marked the verdict, else empty: the suffix
    /// of the daemon's verdict log line and of `check`'s human output.
    pub fn dns_error_field(&self) -> String {
        self.dns_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" dns_error={e}"))
    }
}

/// What the DNS lookups of one evaluation gave.
struct Gathered {
    facts: DnsFacts,
    /// The HELO name cannot be sent as a question: the DNS checks are skipped.
    unqueryable: bool,
    /// The first temporary failure among the lookups.
    failure: Option<DnsFailure>,
}

/// Everything the engine needs besides DNS.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    /// Mode and weight of every check.
    pub table: CheckTable,
    /// Our names, domains and addresses.
    pub identity: Identity,
    /// Operator deny patterns.
    pub deny: DenyList,
    /// Clients accepted without checks.
    pub trusted_networks: Vec<IpNet>,
    /// A score at or above this rejects (unset: the score never rejects by itself).
    pub score_threshold: Option<u32>,
    /// A temporary DNS failure rejects with `dns_tempfail` instead of being ignored.
    pub dns_fail_closed: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            table: CheckTable::from_bundle(Bundle::Standard),
            identity: Identity::default(),
            deny: DenyList::default(),
            trusted_networks: default_trusted_networks(),
            score_threshold: None,
            dns_fail_closed: false,
        }
    }
}

/// Loopback only: `127.0.0.0/8` and `::1/128`.
pub fn default_trusted_networks() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("valid CIDR"),
        "::1/128".parse().expect("valid CIDR"),
    ]
}

struct EngineInner {
    settings: PolicySettings,
    dns: Option<DnsClient>,
}

/// The policy engine. Clones share one instance.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("settings", &self.inner.settings)
            .field("dns", &self.inner.dns.is_some())
            .finish()
    }
}

impl PolicyEngine {
    /// An engine with the given settings; without a DNS client the DNS checks are skipped and
    /// every verdict carries the note `offline`.
    pub fn new(mut settings: PolicySettings, dns: Option<DnsClient>) -> PolicyEngine {
        settings.identity = std::mem::take(&mut settings.identity).normalized();
        PolicyEngine {
            inner: Arc::new(EngineInner { settings, dns }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &PolicySettings {
        &self.inner.settings
    }

    /// The DNS client, when DNS checks are on.
    pub fn dns(&self) -> Option<&DnsClient> {
        self.inner.dns.as_ref()
    }

    /// Whether the client is in a trusted network.
    pub fn is_trusted(&self, client: IpAddr) -> bool {
        let c = crate::addr::canonical(client);
        self.inner
            .settings
            .trusted_networks
            .iter()
            .any(|n| n.contains(&c) || n.contains(&client))
    }

    /// Judges one HELO, DNS included when the engine has a DNS client.
    pub async fn evaluate(&self, input: &HeloInput) -> Verdict {
        if self.is_trusted(input.client) {
            return Verdict::unjudged(Note::Trusted);
        }
        let parsed = input.helo.as_deref().map(rfc5321::parse);
        self.evaluate_parsed(input, parsed.as_ref()).await
    }

    async fn evaluate_parsed(
        &self,
        input: &HeloInput,
        parsed: Option<&rfc5321::Parsed>,
    ) -> Verdict {
        let s = self.subject(input, parsed);
        let mut findings = self.offline_findings(&s);
        let mut notes = Vec::new();
        match &self.inner.dns {
            None => notes.push(Note::Offline),
            Some(dns) => {
                let gathered = self.gather(dns, &s, input.reverse_name.as_deref()).await;
                if gathered.unqueryable {
                    notes.push(Note::DnsUnqueryable);
                } else {
                    let failed = self.dns_findings(
                        &s,
                        &gathered.facts,
                        gathered.failure.as_ref(),
                        &mut findings,
                        &mut notes,
                    );
                    if failed {
                        let mut v = self.finish(findings, notes);
                        v.dns_error = gathered.failure;
                        return v;
                    }
                }
            }
        }
        self.finish(findings, notes)
    }

    /// Judges one HELO without DNS, synchronously (note `offline`). For benchmarks and for a
    /// fast first pass.
    pub fn evaluate_offline(&self, input: &HeloInput) -> Verdict {
        if self.is_trusted(input.client) {
            return Verdict::unjudged(Note::Trusted);
        }
        let parsed = input.helo.as_deref().map(rfc5321::parse);
        let s = self.subject(input, parsed.as_ref());
        let findings = self.offline_findings(&s);
        self.finish(findings, vec![Note::Offline])
    }

    fn subject<'a>(
        &'a self,
        input: &HeloInput,
        parsed: Option<&'a rfc5321::Parsed>,
    ) -> Subject<'a> {
        Subject {
            parsed,
            client: input.client,
            identity: &self.inner.settings.identity,
            deny: &self.inner.settings.deny,
            no_helo: input.no_helo,
            pipelined: input.pipelined,
        }
    }

    fn offline_findings(&self, s: &Subject<'_>) -> Vec<Finding> {
        let table = &self.inner.settings.table;
        checks::OFFLINE
            .iter()
            .filter(|(reason, _)| table.enabled(*reason))
            .filter_map(|&(reason, check)| {
                check(s).map(|explanation| Finding {
                    reason,
                    explanation,
                })
            })
            .collect()
    }

    async fn gather(
        &self,
        dns: &DnsClient,
        s: &Subject<'_>,
        known_reverse_name: Option<&str>,
    ) -> Gathered {
        let table = &self.inner.settings.table;
        let mut g = Gathered {
            facts: DnsFacts::default(),
            unqueryable: false,
            failure: None,
        };
        let Some(name) = s.resolvable_domain() else {
            return g;
        };
        let fqdn = name.fqdn();
        if crate::dns::query_name(&fqdn).is_err() {
            g.unqueryable = true;
            return g;
        }
        let facts = &mut g.facts;
        let forward = table.enabled(Reason::NoDns) || table.enabled(Reason::DnsMismatch);
        let reverse = table.enabled(Reason::RdnsMismatch);
        if reverse && let Some(known) = known_reverse_name {
            let name = known.trim_end_matches('.').to_ascii_lowercase();
            facts.ptr = Answer::Records(vec![name]);
        }
        let ask_reverse = reverse && known_reverse_name.is_none();
        let ask = |wanted: bool, kind: RecordKind, name: String| async move {
            if wanted {
                Some(dns.lookup(kind, &name).await)
            } else {
                None
            }
        };
        let (a, aaaa, mx, ptr) = tokio::join!(
            ask(forward, RecordKind::A, fqdn.clone()),
            ask(forward, RecordKind::Aaaa, fqdn.clone()),
            ask(forward, RecordKind::Mx, fqdn),
            ask(
                ask_reverse,
                RecordKind::Ptr,
                crate::dns::reverse_name(s.client)
            ),
        );
        if let Some(a) = &a {
            facts.a = a.addresses();
        }
        if let Some(aaaa) = &aaaa {
            facts.aaaa = aaaa.addresses();
        }
        if let Some(mx) = &mx {
            facts.mx = mx.names();
        }
        if let Some(ptr) = &ptr {
            facts.ptr = ptr.names();
        }
        g.failure = [a, aaaa, mx, ptr]
            .iter()
            .flatten()
            .find_map(DnsAnswer::tempfail)
            .map(|k| dns.failure(k));
        g
    }

    fn dns_findings(
        &self,
        s: &Subject<'_>,
        facts: &DnsFacts,
        failure: Option<&DnsFailure>,
        findings: &mut Vec<Finding>,
        notes: &mut Vec<Note>,
    ) -> bool {
        let table = &self.inner.settings.table;
        let mut tempfail = false;
        for &(reason, check) in checks::DNS.iter() {
            if !table.enabled(reason) {
                continue;
            }
            match check(s, facts) {
                DnsOutcome::Pass => {}
                DnsOutcome::Fail(explanation) => findings.push(Finding {
                    reason,
                    explanation,
                }),
                DnsOutcome::TempFail => tempfail = true,
            }
        }
        if tempfail {
            if self.inner.settings.dns_fail_closed {
                findings.push(Finding {
                    reason: Reason::DnsTempfail,
                    explanation: match failure {
                        Some(f) => format!(
                            "a DNS lookup failed temporarily ({} from {}); the policy is \
                             fail-closed",
                            f.kind, f.server
                        ),
                        None => {
                            "a DNS lookup failed temporarily; the policy is fail-closed".to_string()
                        }
                    },
                });
            } else {
                notes.push(Note::DnsTempfail);
            }
        }
        tempfail
    }

    fn finish(&self, mut findings: Vec<Finding>, mut notes: Vec<Note>) -> Verdict {
        let settings = &self.inner.settings;
        let table = &settings.table;
        findings.sort_by_key(|f| f.reason);
        findings.dedup_by_key(|f| f.reason);
        let score = findings.iter().map(|f| table.score_of(f.reason)).sum();
        let mut primary = findings
            .iter()
            .position(|f| table.mode(f.reason) == CheckMode::Reject);
        if primary.is_none()
            && let Some(threshold) = settings.score_threshold
            && score >= threshold
        {
            primary = findings.iter().position(|f| table.score_of(f.reason) > 0);
            if primary.is_some() {
                notes.push(Note::ScoreThreshold);
            }
        }
        let decision = match primary {
            Some(i) => {
                let first = findings.remove(i);
                findings.insert(0, first);
                Decision::Reject
            }
            None => Decision::Accept,
        };
        Verdict {
            decision,
            reasons: findings,
            notes,
            score,
            dns_error: None,
        }
    }
}
