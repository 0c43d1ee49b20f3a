//! The operator's side of the fleet (docs/fleet.md): what this member must respect when it
//! takes another's denial (its allow entries, trusted networks and own addresses win; its
//! own entries keep their origin), what it re-publishes after a reconnect, and the commands
//! that share or lift a denial fleet-wide.

use std::time::Instant;

use ipnet::IpNet;
use log::info;

use super::{
    Operator,
    api::{ControlError, Entry, EntrySource, ErrorKind, Removed},
    state::{NetEntry, in_force},
};
use crate::{
    clock::unix_now,
    fleet::{
        Fleet, Local, LocalRules,
        wire::{Denial, DenialKind},
    },
    policy::default_trusted_networks,
};

impl Operator {
    /// The fleet, once this member has joined one.
    pub(super) fn fleet(&self) -> Option<&Fleet> {
        self.fleet.get()
    }

    /// The fleet this member joined (`Fleet::start` was given the operator as its
    /// [`Local`]): from now on the operator's commands can share and lift denials.
    pub fn set_fleet(&self, fleet: Fleet) {
        let _ = self.fleet.set(fleet);
    }

    /// A shared entry's TTL: the one given, or `[reputation] deny_ttl_secs`, which no other
    /// member takes a longer one than.
    pub(super) fn fleet_ttl(&self, ttl: Option<u64>) -> Result<u64, ControlError> {
        if self.fleet().is_none() {
            return Err(ControlError::new(
                ErrorKind::InvalidArgument,
                "--fleet: this member is in no fleet ([fleet] redis is not set)",
            ));
        }
        let longest = self.inner().file.reputation.deny_ttl_secs;
        match ttl {
            None => Ok(longest),
            Some(secs) if secs <= longest => Ok(secs),
            Some(secs) => Err(ControlError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "--ttl {secs}: a fleet entry lasts at most [reputation] deny_ttl_secs \
                     ({longest} s), which the other members hold it to"
                ),
            )),
        }
    }

    /// Shares a new operator entry; the name it is shared under.
    pub(super) fn share_operator_entry(&self, entry: &NetEntry) -> Option<String> {
        let fleet = self.fleet()?;
        let expires_at = entry.expires_at?;
        fleet.share(
            entry.net,
            DenialKind::Operator,
            expires_at,
            entry.comment.clone(),
        );
        Some(fleet.name().to_owned())
    }

    /// `deny del --fleet`: the fleet's denial of `net` is lifted on every member; this
    /// member's own operator entry for it goes too, other members' local entries stay.
    pub(super) fn lift_fleet_denial(&self, net: IpNet) -> Result<Removed, ControlError> {
        let Some(fleet) = self.fleet() else {
            return Err(ControlError::new(
                ErrorKind::InvalidArgument,
                "--fleet: this member is in no fleet ([fleet] redis is not set)",
            ));
        };
        let local = self.inner().lists.deny.iter().any(|e| e.net == net);
        if local {
            self.del_net(true, net, false)?;
        }
        fleet.lift(net);
        info!("operator: lifted {net} on every member of the fleet");
        Ok(Removed {
            removed: net.to_string(),
        })
    }

    /// The fleet's denials held here, as deny list entries.
    pub(super) fn fleet_entries(&self, now: u64) -> Vec<Entry> {
        let Some(fleet) = self.fleet() else {
            return Vec::new();
        };
        fleet
            .held()
            .into_iter()
            .map(|d| Entry {
                net: d.net,
                source: EntrySource::Fleet,
                expires_at: Some(d.expires_at),
                expires_in_secs: Some(d.expires_at.saturating_sub(now)),
                comment: Some(match d.comment {
                    Some(comment) => format!("{}: {comment}", d.kind.as_str()),
                    None => d.kind.as_str().to_owned(),
                }),
                added_at: Some(d.made_at_ms / 1_000),
                member: Some(d.member),
            })
            .collect()
    }
}

impl Local for Operator {
    fn rules(&self) -> LocalRules {
        let inner = self.inner();
        let now = unix_now();
        let policy = &inner.file.policy;
        let never_denied = inner
            .file
            .lists
            .allow
            .iter()
            .copied()
            .chain(
                inner
                    .lists
                    .allow
                    .iter()
                    .filter(|e| in_force(e.expires_at, now))
                    .map(|e| e.net),
            )
            .chain(
                policy
                    .trusted_networks
                    .clone()
                    .unwrap_or_else(default_trusted_networks),
            )
            .collect();
        LocalRules {
            never_denied,
            our_addrs: policy.our_addrs.clone(),
            max_ttl_secs: inner.file.reputation.deny_ttl_secs,
        }
    }

    fn denies(&self, net: IpNet) -> bool {
        let now = unix_now();
        let local = {
            let inner = self.inner();
            inner.file.lists.deny.contains(&net)
                || inner
                    .lists
                    .deny
                    .iter()
                    .any(|e| e.net == net && in_force(e.expires_at, now))
        };
        local || self.stage.reputation().is_denied(net)
    }

    fn own_shared(&self, fleet: &Fleet) -> Vec<Denial> {
        let now = unix_now();
        let mut own: Vec<Denial> = self
            .inner()
            .lists
            .deny
            .iter()
            .filter(|e| e.shared && in_force(e.expires_at, now))
            .filter_map(|e| {
                let expires_at = e.expires_at?;
                Some(fleet.own(e.net, DenialKind::Operator, expires_at, e.comment.clone()))
            })
            .collect();
        if fleet.shares_reputation() && !self.stage.monitor() {
            for source in self.stage.reputation().list(Instant::now()) {
                if let Some(left) = source.denied_for {
                    let expires_at = now + left.as_secs();
                    own.push(fleet.own(source.source, DenialKind::Reputation, expires_at, None));
                }
            }
        }
        own
    }
}
