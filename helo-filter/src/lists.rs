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

    pub fn undeny(&mut self, net: IpNet) -> anyhow::Result<()> {
        self.deny
            .remove(&trie_key(net))
            .with_context(|| format!("removing {net} from the kernel deny map"))
    }
}
