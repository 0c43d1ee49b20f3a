//! `dynamic` (soft): the client's IPv4 address appears in the host part of the name (the part
//! left of the registered domain), as decimal octets in either order (`c-76-121-96-159`,
//! `159.96.121.76`, `076121096159`) or as eight hex digits (`4c79609f`).

use std::net::{IpAddr, Ipv4Addr};

use super::{Subject, registered_domain};
use crate::addr;

/// Whether the host part of `name` embeds `ip`.
pub fn embeds_address(name: &str, ip: Ipv4Addr) -> bool {
    let host = match registered_domain(name) {
        Some(reg) if name.len() > reg.len() => &name[..name.len() - reg.len() - 1],
        Some(_) => return false,
        None => name.rsplit_once('.').map_or(name, |(h, _)| h),
    };
    let o = ip.octets();
    let numbers: Vec<u32> = host
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty() && t.len() <= 3)
        .filter_map(|t| t.parse().ok())
        .collect();
    let fwd = o.map(u32::from);
    let mut rev = fwd;
    rev.reverse();
    if numbers.windows(4).any(|w| w == fwd || w == rev) {
        return true;
    }
    let padded = format!("{:03}{:03}{:03}{:03}", o[0], o[1], o[2], o[3]);
    let hex = format!("{:08x}", u32::from(ip));
    host.contains(&padded) || host.contains(&hex)
}

/// Flags a name that embeds the client's IPv4 address.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let d = s.domain()?;
    let IpAddr::V4(v4) = addr::canonical(s.client) else {
        return None;
    };
    embeds_address(d.as_str(), v4).then(|| {
        format!(
            "{:?} embeds the client's address {v4}, typical of a dynamic pool",
            d.as_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        let c = "76.121.96.159";
        assert!(fails(check, "c-76-121-96-159.hsd1.wa.comcast.net", c));
        assert!(fails(check, "159.96.121.76.dyn.example.net", c));
        assert!(fails(check, "host076121096159.example.net", c));
        assert!(fails(check, "dsl-4c79609f.example.net", c));
        assert!(fails(
            check,
            "c-203-0-113-10.dyn.example.net",
            "203.0.113.10"
        ));
        assert!(!fails(check, "mail.example.net", c));
        assert!(!fails(check, "c-76-121-96-158.example.net", c));
        // The registered domain itself is not the host part.
        assert!(!fails(check, "76-121-96-159.net", c));
        assert!(!fails(check, "c-76-121-96-159.example.net", "2001:db8::1"));
    }
}
