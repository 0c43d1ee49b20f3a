//! `dns_mismatch` (soft): the name resolves, but none of its A/AAAA records is the client.
//! A name that resolves through its MX only is flagged too; a name that does not resolve at all
//! is left to `no_dns`.

use super::{DnsFacts, DnsOutcome, Subject};
use crate::addr;

/// Flags a resolvable name whose addresses do not include the client's.
pub fn check(s: &Subject<'_>, f: &DnsFacts) -> DnsOutcome {
    let Some(d) = s.resolvable_domain() else {
        return DnsOutcome::Pass;
    };
    let addrs = f.a.records().iter().chain(f.aaaa.records());
    if addrs.clone().any(|&ip| addr::same_address(ip, s.client)) {
        return DnsOutcome::Pass;
    }
    if f.a.is_tempfail() || f.aaaa.is_tempfail() {
        return DnsOutcome::TempFail;
    }
    let count = addrs.count();
    if count == 0 && !f.mx.has_records() {
        return if f.mx.is_tempfail() {
            DnsOutcome::TempFail
        } else {
            DnsOutcome::Pass
        };
    }
    DnsOutcome::Fail(if count == 0 {
        format!("{:?} has an MX record but no address record", d.as_str())
    } else {
        format!(
            "none of the {count} addresses of {:?} is the client's address {}",
            d.as_str(),
            s.client
        )
    })
}
