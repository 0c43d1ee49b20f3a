//! `rdns_mismatch` (soft): the client's PTR name is neither the HELO name nor in the same
//! registered domain. A client without a PTR record is flagged too.

use super::{DnsFacts, DnsOutcome, Subject, registered_domain};

/// Flags a HELO name that the client's reverse DNS does not back.
pub fn check(s: &Subject<'_>, f: &DnsFacts) -> DnsOutcome {
    let Some(d) = s.resolvable_domain() else {
        return DnsOutcome::Pass;
    };
    let name = d.as_str();
    let helo_reg = registered_domain(name);
    let matches = f
        .ptr
        .records()
        .iter()
        .any(|p| p == name || (helo_reg.is_some() && registered_domain(p) == helo_reg));
    if matches {
        return DnsOutcome::Pass;
    }
    match &f.ptr {
        super::Answer::TempFail => DnsOutcome::TempFail,
        super::Answer::NotAsked => DnsOutcome::Pass,
        super::Answer::NoRecords => {
            DnsOutcome::Fail(format!("the client {} has no reverse DNS name", s.client))
        }
        super::Answer::Records(r) => DnsOutcome::Fail(format!(
            "the client's reverse DNS name {:?} does not match {name:?}",
            r.first().map(String::as_str).unwrap_or_default()
        )),
    }
}
