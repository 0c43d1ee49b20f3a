//! Which addresses count as routable on the public Internet, per the spec's list.
//!
//! Documentation ranges and Teredo count as routable on purpose, so that labs can use them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Folds an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) to its IPv4 form; other addresses are
/// returned unchanged. Used for routability and for every comparison of two addresses.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether two addresses are the same host, an IPv4-mapped form equal to its IPv4 form.
pub fn same_address(a: IpAddr, b: IpAddr) -> bool {
    canonical(a) == canonical(b)
}

/// Whether `ip` is routable.
pub fn is_routable(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_routable(v4),
        IpAddr::V6(v6) => v6_routable(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v4_routable(ip: Ipv4Addr) -> bool {
    const NON_ROUTABLE: [([u8; 4], u32); 9] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 168, 0, 0], 16),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    !NON_ROUTABLE
        .iter()
        .any(|&(net, prefix)| in_v4(ip, net, prefix))
}

fn v6_routable(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let in_net = |net: u128, prefix: u32| {
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        bits & mask == net & mask
    };
    // Global unicast is 2000::/3; ::, ::1, fc00::/7, fe80::/10 and ff00::/8 all lie outside it.
    in_net(0x2000 << 112, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> bool {
        is_routable(s.parse().unwrap())
    }

    #[test]
    fn ipv4_table() {
        for s in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.3.4",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.1.2.3",
            "255.255.255.255",
        ] {
            assert!(!r(s), "{s} must be non-routable");
        }
        for s in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.2.1",
            "198.51.100.25",
            "203.0.113.10",
            "223.255.255.255",
        ] {
            assert!(r(s), "{s} must be routable");
        }
    }

    #[test]
    fn ipv6_table() {
        for s in [
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "100::1",
            "4000::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
        ] {
            assert!(!r(s), "{s} must be non-routable");
        }
        for s in [
            "2001:db8:1::10",
            "2001::1",
            "2a00:1450::1",
            "3fff::1",
            "::ffff:203.0.113.10",
        ] {
            assert!(r(s), "{s} must be routable");
        }
    }

    #[test]
    fn mapped_addresses_compare_equal_to_ipv4() {
        assert!(same_address(
            "::ffff:203.0.113.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap()
        ));
        assert!(!same_address(
            "2001:db8::1".parse().unwrap(),
            "203.0.113.10".parse().unwrap()
        ));
    }
}
