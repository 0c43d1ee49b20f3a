//! `no_dns`: the name has no A, AAAA or MX record.

use super::{DnsFacts, DnsOutcome, Subject};

/// Fails when none of A, AAAA and MX has a record; undecided when one of them failed
/// temporarily and none had records.
pub fn check(s: &Subject<'_>, f: &DnsFacts) -> DnsOutcome {
    let Some(d) = s.resolvable_domain() else {
        return DnsOutcome::Pass;
    };
    if f.a.has_records() || f.aaaa.has_records() || f.mx.has_records() {
        return DnsOutcome::Pass;
    }
    if f.a.is_tempfail() || f.aaaa.is_tempfail() || f.mx.is_tempfail() {
        return DnsOutcome::TempFail;
    }
    DnsOutcome::Fail(format!("{:?} has no A, AAAA or MX record", d.as_str()))
}
