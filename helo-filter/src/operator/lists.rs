//! The allow and deny lists: the configuration file's plus the operator's, kept in step
//! with the kernel's maps (what they call for is computed, then the difference applied), and
//! the list commands.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use helo_filter_common::{DenyEntry, origin};
use ipnet::IpNet;
use log::{info, warn};

use super::{
    Inner, Operator,
    api::{
        AllowList, ControlError, DenyList, Entry, EntrySource, ErrorKind, HeloEntry as HeloRow,
        Removed,
    },
    state::{HeloEntry, Lists, NetEntry, in_force},
};
use crate::{
    clock::{boot_time_ns, unix_now},
    config::PolicyFile,
    dns::DnsClient,
    policy::{DenyPattern, PolicyEngine},
};

/// The longest comment kept with an entry.
const MAX_COMMENT: usize = 200;

/// The kernel lists the configuration and the operator's entries call for at `now`.
#[derive(Default, PartialEq)]
struct Desired {
    allow: HashSet<IpNet>,
    /// With the time left for entries that expire.
    deny: Vec<(IpNet, Option<Duration>)>,
}

/// With `expired`, entries whose time is up count too (with no time left): what the kernel
/// may still hold, so that a change removes them.
fn desired(file: &PolicyFile, lists: &Lists, now: u64, expired: bool) -> Desired {
    let left = |at: Option<u64>| at.map(|at| Duration::from_secs(at.saturating_sub(now)));
    let operator = |entries: &[NetEntry]| -> Vec<(IpNet, Option<Duration>)> {
        entries
            .iter()
            .filter(|e| expired || in_force(e.expires_at, now))
            .map(|e| (e.net, left(e.expires_at)))
            .collect()
    };
    Desired {
        allow: file
            .lists
            .allow
            .iter()
            .copied()
            .chain(operator(&lists.allow).into_iter().map(|(net, _)| net))
            .collect(),
        deny: file
            .lists
            .deny
            .iter()
            .map(|net| (*net, None))
            .chain(operator(&lists.deny))
            .collect(),
    }
}

/// The engine for the file's settings plus the operator's entries in force: allow-listed
/// sources are trusted, HELO patterns denied.
fn engine(
    file: &PolicyFile,
    lists: &Lists,
    dns: Option<DnsClient>,
) -> anyhow::Result<PolicyEngine> {
    let now = unix_now();
    let mut merged = file.clone();
    merged.lists.allow.extend(
        lists
            .allow
            .iter()
            .filter(|e| in_force(e.expires_at, now))
            .map(|e| e.net),
    );
    for entry in lists
        .deny_helo
        .iter()
        .filter(|e| in_force(e.expires_at, now))
    {
        merged
            .policy
            .deny_helo
            .push(DenyPattern::parse(&entry.pattern).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    Ok(PolicyEngine::new(merged.settings(), dns))
}

fn ttl_to_expiry(ttl_secs: Option<u64>, now: u64) -> Result<Option<u64>, ControlError> {
    match ttl_secs {
        Some(0) => Err(ControlError::new(
            ErrorKind::InvalidArgument,
            "--ttl: at least 1 second",
        )),
        Some(secs) => Ok(Some(now.saturating_add(secs))),
        None => Ok(None),
    }
}

fn check_comment(comment: &Option<String>) -> Result<(), ControlError> {
    let invalid = |message: String| Err(ControlError::new(ErrorKind::InvalidArgument, message));
    match comment {
        Some(c) if c.len() > MAX_COMMENT => {
            invalid(format!("--comment: at most {MAX_COMMENT} bytes"))
        }
        Some(c) if c.chars().any(char::is_control) => {
            invalid("--comment: no control characters".to_owned())
        }
        _ => Ok(()),
    }
}

fn operator_entry(entry: &NetEntry, now: u64) -> Entry {
    Entry {
        net: entry.net,
        source: EntrySource::Operator,
        expires_at: entry.expires_at,
        expires_in_secs: entry.expires_at.map(|at| at.saturating_sub(now)),
        comment: entry.comment.clone(),
        added_at: Some(entry.added_at),
        member: None,
    }
}

fn config_entry(net: &IpNet) -> Entry {
    Entry {
        net: *net,
        source: EntrySource::Config,
        expires_at: None,
        expires_in_secs: None,
        comment: None,
        added_at: None,
        member: None,
    }
}

fn operator_helo(entry: &HeloEntry) -> HeloRow {
    HeloRow {
        pattern: entry.pattern.clone(),
        source: EntrySource::Operator,
        expires_at: entry.expires_at,
        comment: entry.comment.clone(),
        added_at: Some(entry.added_at),
    }
}

/// What the start does with a denial found in the kernel's map.
#[derive(Debug, PartialEq)]
enum FoundDenial {
    Keep,
    Remove,
    /// A reputation denial made after the last snapshot: reputation takes it in, with the
    /// time it has left.
    Adopt(Duration),
}

/// The fate of a kernel deny entry at the start, `boot` nanoseconds after boot: `known` when
/// reputation's snapshot has it, `wanted` when the lists call for it, `in_fleet` when this
/// member is in a fleet (whose denials it keeps enforcing until the fleet says otherwise).
fn found_denial(
    entry: &DenyEntry,
    boot: u64,
    known: bool,
    wanted: bool,
    in_fleet: bool,
) -> FoundDenial {
    let expired = entry.expires_ns != 0 && entry.expires_ns <= boot;
    if entry.origin == origin::FLEET && !wanted {
        if in_fleet && !expired {
            FoundDenial::Keep
        } else {
            FoundDenial::Remove
        }
    } else if entry.origin == origin::REPUTATION && expired {
        // Ran out while the daemon was down: the kernel ignores it; free its slot.
        FoundDenial::Remove
    } else if entry.origin == origin::REPUTATION && !known {
        // Denied after the last snapshot: keep it, and let reputation know.
        FoundDenial::Adopt(Duration::from_nanos(entry.expires_ns.saturating_sub(boot)))
    } else if entry.origin != origin::REPUTATION && !wanted {
        FoundDenial::Remove
    } else {
        FoundDenial::Keep
    }
}

impl Operator {
    /// Makes the kernel's lists what the configuration and the operator's entries call
    /// for, at the start (the maps may be a previous daemon's): reputation denials found
    /// there that reputation does not know are taken into it, those that ran out are
    /// removed, and reputation's own denials the kernel lacks are put back.
    pub(super) fn reconcile_kernel(&self) -> anyhow::Result<()> {
        let inner = self.inner();
        let want = desired(&inner.file, &inner.lists, unix_now(), false);
        let reputation = self.stage.reputation();
        let mut kernel = self.stage.kernel_lists();
        let boot = boot_time_ns();
        let known: HashSet<IpNet> = reputation
            .list(Instant::now())
            .iter()
            .filter(|s| s.denied_for.is_some())
            .map(|s| s.source)
            .collect();
        for net in &want.allow {
            kernel.allow(*net)?;
        }
        for (net, ttl) in &want.deny {
            kernel.deny(*net, *ttl, origin::OPERATOR)?;
        }
        for net in kernel.allowed() {
            if !want.allow.contains(&net) {
                kernel.disallow(net)?;
            }
        }
        let wanted_deny: HashSet<IpNet> = want.deny.iter().map(|(net, _)| *net).collect();
        let in_fleet = inner.file.fleet.redis.is_some();
        for (net, entry) in kernel.denied() {
            match found_denial(
                &entry,
                boot,
                known.contains(&net),
                wanted_deny.contains(&net),
                in_fleet,
            ) {
                FoundDenial::Keep => {}
                FoundDenial::Remove => kernel.undeny(net)?,
                FoundDenial::Adopt(left) => reputation.adopt_denial(net, left, Instant::now()),
            }
        }
        // Snapshot denials the kernel no longer has (expired while the daemon was down, or
        // a fresh kernel): put them back.
        if !self.stage.monitor() {
            for source in reputation.list(Instant::now()) {
                if let Some(left) = source.denied_for {
                    kernel.deny(source.source, Some(left), origin::REPUTATION)?;
                }
            }
        }
        crate::metrics::list_sizes(want.allow.len(), want.deny.len());
        Ok(())
    }

    pub(super) fn rebuild_engine(&self) -> anyhow::Result<()> {
        let inner = self.inner();
        let fresh = engine(&inner.file, &inner.lists, inner.dns.clone())?;
        self.stage.set_engine(fresh);
        Ok(())
    }

    /// Makes `lists` (and `file`, and `dns`) the ones in force: kernel, disk, memory,
    /// engine. On failure nothing has changed.
    pub(super) fn commit(
        &self,
        inner: &mut Inner,
        file: Option<PolicyFile>,
        lists: Lists,
        dns: Option<Option<DnsClient>>,
    ) -> Result<(), ControlError> {
        let now = unix_now();
        let next_file = file.as_ref().unwrap_or(&inner.file);
        let fresh = engine(next_file, &lists, dns.clone().unwrap_or(inner.dns.clone()))
            .map_err(|e| ControlError::new(ErrorKind::InvalidArgument, format!("{e:#}")))?;
        let before = desired(&inner.file, &inner.lists, now, true);
        let after = desired(next_file, &lists, now, false);
        self.apply(&before, &after)
            .map_err(|e| ControlError::kernel(&e))?;
        if lists != inner.lists
            && let Err(e) = self.state.save_lists(&lists)
        {
            if let Err(undo) = self.apply(&after, &before) {
                warn!("putting the kernel lists back: {undo:#}");
            }
            return Err(ControlError::io(&e));
        }
        inner.lists = lists;
        if let Some(file) = file {
            inner.file = file;
        }
        if let Some(dns) = dns {
            inner.dns = dns;
        }
        self.stage.set_engine(fresh);
        crate::metrics::list_sizes(after.allow.len(), after.deny.len());
        Ok(())
    }

    /// Changes the kernel lists from `before` to `after`.
    fn apply(&self, before: &Desired, after: &Desired) -> anyhow::Result<()> {
        if before == after {
            return Ok(());
        }
        let mut kernel = self.stage.kernel_lists();
        for net in after.allow.difference(&before.allow) {
            kernel.allow(*net)?;
        }
        for net in before.allow.difference(&after.allow) {
            kernel.disallow(*net)?;
        }
        let kept: HashSet<IpNet> = after.deny.iter().map(|(net, _)| *net).collect();
        for (net, ttl) in &after.deny {
            if !before.deny.contains(&(*net, *ttl)) {
                kernel.deny(*net, *ttl, origin::OPERATOR)?;
            }
        }
        for (net, _) in &before.deny {
            if !kept.contains(net) {
                kernel.undeny(*net)?;
            }
        }
        Ok(())
    }

    /// Ends operator entries whose time is up (called every second).
    pub fn expire(&self) {
        let mut inner = self.inner();
        let now = unix_now();
        let mut lists = inner.lists.clone();
        lists.allow.retain(|e| in_force(e.expires_at, now));
        lists.deny.retain(|e| in_force(e.expires_at, now));
        lists.deny_helo.retain(|e| in_force(e.expires_at, now));
        if lists != inner.lists {
            info!("operator list entries expired");
            match self.commit(&mut inner, None, lists, None) {
                // The state directory logs its failing writes (once a minute, not once a
                // second); the kernel ends the entries by their own expiry meanwhile.
                Ok(())
                | Err(ControlError {
                    kind: ErrorKind::Io,
                    ..
                }) => {}
                Err(e) => warn!("expiring list entries: {e}"),
            }
        }
    }

    /// `allow add`, `deny add`: a source (replacing an entry for the same CIDR).
    /// `allow add`, `deny add` (`shared`: `deny add --fleet`, or `[fleet] operator =
    /// "shared"`).
    pub(super) fn add_net(
        &self,
        deny: bool,
        net: IpNet,
        ttl: Option<u64>,
        comment: Option<String>,
        shared: bool,
    ) -> Result<Entry, ControlError> {
        check_comment(&comment)?;
        let now = unix_now();
        let net = net.trunc();
        let shared = deny && (shared || self.fleet().is_some_and(|f| f.shares_operator_entries()));
        let ttl = if shared {
            Some(self.fleet_ttl(ttl)?)
        } else {
            ttl
        };
        let entry = NetEntry {
            net,
            expires_at: ttl_to_expiry(ttl, now)?,
            comment,
            added_at: now,
            shared,
        };
        let mut inner = self.inner();
        let mut lists = inner.lists.clone();
        let list = if deny {
            &mut lists.deny
        } else {
            &mut lists.allow
        };
        list.retain(|e| e.net != net);
        list.push(entry.clone());
        self.commit(&mut inner, None, lists, None)?;
        drop(inner);
        info!(
            "operator: {} {net}{}{}",
            if deny { "denied" } else { "allowed" },
            ttl.map_or(String::new(), |t| format!(" for {t} s")),
            if shared {
                ", shared with the fleet"
            } else {
                ""
            }
        );
        let mut added = operator_entry(&entry, now);
        if shared {
            added.member = self.share_operator_entry(&entry);
        }
        Ok(added)
    }

    /// `allow del`, `deny del`: an operator's entry (the file's are edited in the file);
    /// with `fleet` (`deny del --fleet`), the fleet's denial of `net` is lifted on every
    /// member too.
    pub(super) fn del_net(
        &self,
        deny: bool,
        net: IpNet,
        fleet: bool,
    ) -> Result<Removed, ControlError> {
        let net = net.trunc();
        if fleet {
            return self.lift_fleet_denial(net);
        }
        let name = if deny { "deny" } else { "allow" };
        let mut inner = self.inner();
        let in_file = if deny {
            inner.file.lists.deny.contains(&net)
        } else {
            inner.file.lists.allow.contains(&net)
        };
        let mut lists = inner.lists.clone();
        let list = if deny {
            &mut lists.deny
        } else {
            &mut lists.allow
        };
        let before = list.len();
        list.retain(|e| e.net != net);
        if list.len() == before {
            drop(inner);
            let from_fleet = self.fleet().and_then(|f| f.held_for(net));
            return Err(if let Some(denial) = from_fleet {
                ControlError::new(
                    ErrorKind::FleetEntry,
                    format!(
                        "{net} was denied by the fleet (member {}): `deny del --fleet {net}` \
                         lifts it on every member",
                        denial.member
                    ),
                )
            } else if in_file {
                ControlError::new(
                    ErrorKind::ConfigEntry,
                    format!(
                        "{net} is in the configuration file ([lists] {name}): edit the file and \
                         reload"
                    ),
                )
            } else {
                ControlError::new(
                    ErrorKind::NotFound,
                    format!("{net} is not in the {name} list"),
                )
            });
        }
        self.commit(&mut inner, None, lists, None)?;
        drop(inner);
        info!("operator: removed {net} from the {name} list");
        // The local entry stood for a fleet denial of the same prefix: that one again.
        if let Some(fleet) = self.fleet() {
            fleet.reapply(net);
        }
        Ok(Removed {
            removed: net.to_string(),
        })
    }

    /// `deny add --helo`.
    pub(super) fn add_helo(
        &self,
        pattern: String,
        ttl: Option<u64>,
        comment: Option<String>,
    ) -> Result<HeloRow, ControlError> {
        check_comment(&comment)?;
        DenyPattern::parse(&pattern).map_err(|e| {
            ControlError::new(
                ErrorKind::InvalidArgument,
                format!("--helo {pattern:?}: {e}"),
            )
        })?;
        let now = unix_now();
        let entry = HeloEntry {
            pattern: pattern.clone(),
            expires_at: ttl_to_expiry(ttl, now)?,
            comment,
            added_at: now,
        };
        let mut inner = self.inner();
        let mut lists = inner.lists.clone();
        lists.deny_helo.retain(|e| e.pattern != pattern);
        lists.deny_helo.push(entry.clone());
        self.commit(&mut inner, None, lists, None)?;
        info!("operator: HELO pattern {pattern:?} denied");
        Ok(operator_helo(&entry))
    }

    /// `deny del --helo`.
    pub(super) fn del_helo(&self, pattern: String) -> Result<Removed, ControlError> {
        let mut inner = self.inner();
        let mut lists = inner.lists.clone();
        let before = lists.deny_helo.len();
        lists.deny_helo.retain(|e| e.pattern != pattern);
        if lists.deny_helo.len() == before {
            let in_file = inner
                .file
                .policy
                .helo_patterns()
                .any(|p| p.to_string() == pattern);
            return Err(if in_file {
                ControlError::new(
                    ErrorKind::ConfigEntry,
                    format!(
                        "HELO pattern {pattern:?} is in the configuration file ([policy] deny): \
                         edit the file and reload"
                    ),
                )
            } else {
                ControlError::new(
                    ErrorKind::NotFound,
                    format!("HELO pattern {pattern:?} is not in the deny list"),
                )
            });
        }
        self.commit(&mut inner, None, lists, None)?;
        info!("operator: HELO pattern {pattern:?} removed from the deny list");
        Ok(Removed { removed: pattern })
    }

    /// `allow list`: the file's entries, then the operator's.
    pub(super) fn allow_list(&self) -> AllowList {
        let inner = self.inner();
        let now = unix_now();
        let entries = inner
            .file
            .lists
            .allow
            .iter()
            .map(config_entry)
            .chain(inner.lists.allow.iter().map(|e| operator_entry(e, now)))
            .collect();
        AllowList { entries }
    }

    /// `deny list`: the file's sources, the operator's, reputation's; then HELO patterns.
    pub(super) fn deny_list(&self) -> DenyList {
        let inner = self.inner();
        let now = unix_now();
        let mut entries: Vec<Entry> = inner
            .file
            .lists
            .deny
            .iter()
            .map(config_entry)
            .chain(inner.lists.deny.iter().map(|e| operator_entry(e, now)))
            .collect();
        for source in self.stage.reputation().list(Instant::now()) {
            if let Some(left) = source.denied_for {
                entries.push(Entry {
                    net: source.source,
                    source: EntrySource::Reputation,
                    expires_at: Some(now + left.as_secs()),
                    expires_in_secs: Some(left.as_secs()),
                    comment: Some(format!("score {:.2}", source.score)),
                    added_at: None,
                    member: None,
                });
            }
        }
        entries.extend(self.fleet_entries(now));
        let helo = inner
            .file
            .policy
            .helo_patterns()
            .map(|p| HeloRow {
                pattern: p.to_string(),
                source: EntrySource::Config,
                expires_at: None,
                comment: None,
                added_at: None,
            })
            .chain(inner.lists.deny_helo.iter().map(operator_helo))
            .collect();
        DenyList { entries, helo }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use helo_filter_common::{DenyEntry, origin};

    use super::{FoundDenial, found_denial};

    const SECOND: u64 = 1_000_000_000;

    fn entry(origin: u32, expires_ns: u64) -> DenyEntry {
        DenyEntry {
            expires_ns,
            origin,
            _pad: 0,
        }
    }

    #[test]
    fn a_reputation_denial_that_ran_out_while_down_leaves_the_kernel() {
        let boot = 100 * SECOND;
        for known in [false, true] {
            for expires in [boot - SECOND, boot] {
                assert_eq!(
                    found_denial(
                        &entry(origin::REPUTATION, expires),
                        boot,
                        known,
                        false,
                        false
                    ),
                    FoundDenial::Remove,
                    "expired at {expires}, known {known}"
                );
            }
        }
    }

    #[test]
    fn a_reputation_denial_still_in_force_is_kept_or_adopted_with_its_time_left() {
        let boot = 100 * SECOND;
        let live = entry(origin::REPUTATION, boot + 30 * SECOND);
        assert_eq!(
            found_denial(&live, boot, true, false, false),
            FoundDenial::Keep
        );
        assert_eq!(
            found_denial(&live, boot, false, false, false),
            FoundDenial::Adopt(Duration::from_secs(30))
        );
    }

    #[test]
    fn fleet_denials_stay_while_in_a_fleet_and_unexpired() {
        let boot = 100 * SECOND;
        let live = entry(origin::FLEET, boot + SECOND);
        assert_eq!(
            found_denial(&live, boot, false, false, true),
            FoundDenial::Keep
        );
        assert_eq!(
            found_denial(&live, boot, false, false, false),
            FoundDenial::Remove,
            "no fleet any more"
        );
        let ended = entry(origin::FLEET, boot - SECOND);
        assert_eq!(
            found_denial(&ended, boot, false, false, true),
            FoundDenial::Remove
        );
    }

    #[test]
    fn operator_denials_stay_only_while_the_lists_call_for_them() {
        let boot = 100 * SECOND;
        for expires in [0, boot + SECOND] {
            let found = entry(origin::OPERATOR, expires);
            assert_eq!(
                found_denial(&found, boot, false, true, false),
                FoundDenial::Keep
            );
            assert_eq!(
                found_denial(&found, boot, false, false, false),
                FoundDenial::Remove
            );
        }
    }
}
