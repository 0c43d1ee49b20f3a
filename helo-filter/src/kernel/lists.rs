//! The kernel's allow and deny tries: allow-listed sources bypass the XDP program's logic;
//! denied sources' SYNs to the SMTP ports are dropped. Both families share one key type
//! (IPv4 mapped into `::ffff:0:0/96`).

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{
        MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use helo_filter_common::{DenyEntry, FAMILY_IPV4, FAMILY_IPV6, IPV4_MAPPED_PREFIX, maps};
use ipnet::IpNet;

use crate::kernel::boot_time_ns;

pub struct KernelLists {
    allow: LpmTrie<MapData, [u8; 16], u8>,
    deny: LpmTrie<MapData, [u8; 16], DenyEntry>,
}

/// The trie key of a network.
fn trie_key(net: IpNet) -> Key<[u8; 16]> {
    let net = net.trunc();
    match net {
        IpNet::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.addr().octets());
            let data = helo_filter_common::trie_address(FAMILY_IPV4, &addr);
            Key::new(IPV4_MAPPED_PREFIX + u32::from(v4.prefix_len()), data)
        }
        IpNet::V6(v6) => {
            let data = helo_filter_common::trie_address(FAMILY_IPV6, &v6.addr().octets());
            Key::new(u32::from(v6.prefix_len()), data)
        }
    }
}

/// The network of a trie key (the inverse of [`trie_key`]).
fn key_net(key: &Key<[u8; 16]>) -> Option<IpNet> {
    let (data, prefix) = (key.data(), key.prefix_len());
    let mapped = data[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
    if mapped && prefix >= IPV4_MAPPED_PREFIX {
        let v4 = std::net::Ipv4Addr::new(data[12], data[13], data[14], data[15]);
        let len = u8::try_from(prefix - IPV4_MAPPED_PREFIX).ok()?;
        return ipnet::Ipv4Net::new(v4, len).ok().map(IpNet::V4);
    }
    let len = u8::try_from(prefix).ok()?;
    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(data), len)
        .ok()
        .map(IpNet::V6)
}

impl KernelLists {
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let allow = ebpf.take_map(maps::ALLOW).context("ALLOW map missing")?;
        let deny = ebpf.take_map(maps::DENY).context("DENY map missing")?;
        Ok(KernelLists {
            allow: LpmTrie::try_from(allow)?,
            deny: LpmTrie::try_from(deny)?,
        })
    }

    pub fn allow(&mut self, net: IpNet) -> anyhow::Result<()> {
        self.allow
            .insert(&trie_key(net), 1, 0)
            .with_context(|| format!("adding {net} to the kernel allow list"))
    }

    /// Denies `net` until `ttl` from now (`None`: no expiry).
    pub fn deny(
        &mut self,
        net: IpNet,
        ttl: Option<std::time::Duration>,
        origin: u32,
    ) -> anyhow::Result<()> {
        let entry = DenyEntry {
            expires_ns: ttl.map_or(0, |ttl| boot_time_ns() + ttl.as_nanos() as u64),
            origin,
            _pad: 0,
        };
        self.deny
            .insert(&trie_key(net), entry, 0)
            .with_context(|| format!("adding {net} to the kernel deny map"))
    }

    pub fn disallow(&mut self, net: IpNet) -> anyhow::Result<()> {
        self.allow
            .remove(&trie_key(net))
            .with_context(|| format!("removing {net} from the kernel allow list"))
    }

    /// The networks in the kernel allow list.
    pub fn allowed(&self) -> Vec<IpNet> {
        self.allow
            .keys()
            .filter_map(|k| key_net(&k.ok()?))
            .collect()
    }

    /// The kernel deny map's entries.
    pub fn denied(&self) -> Vec<(IpNet, DenyEntry)> {
        self.deny
            .iter()
            .filter_map(|entry| {
                let (key, value) = entry.ok()?;
                Some((key_net(&key)?, value))
            })
            .collect()
    }

    pub fn undeny(&mut self, net: IpNet) -> anyhow::Result<()> {
        self.deny
            .remove(&trie_key(net))
            .with_context(|| format!("removing {net} from the kernel deny map"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_keys_map_back_to_their_networks() {
        for net in [
            "203.0.113.0/24",
            "198.51.100.7/32",
            "2001:db8::/32",
            "2001:db8:1::10/128",
            "0.0.0.0/0",
        ] {
            let net: IpNet = net.parse().expect("net");
            assert_eq!(key_net(&trie_key(net)), Some(net));
        }
    }
}
