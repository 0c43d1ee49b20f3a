//! `explain ADDRESS`: why an address is treated as it is (fail2ban's `banned IP`, spamd's
//! `spamdb IP`): the list entries that cover it, its source's reputation, and its latest
//! sessions with their verdicts.

use std::net::IpAddr;

use super::{
    Operator,
    api::{Entry, EntrySource, Explanation, Standing},
    flow,
};

/// The entries that cover `address`.
fn covering(entries: Vec<Entry>, address: IpAddr) -> Vec<Entry> {
    entries
        .into_iter()
        .filter(|e| e.net.contains(&address))
        .collect()
}

impl Operator {
    pub(super) fn explain(&self, address: IpAddr) -> Explanation {
        let allow = covering(self.allow_list().entries, address);
        let deny = covering(self.deny_list().entries, address);
        let monitor = self.stage.monitor();
        // In monitor mode reputation's denials are counted, not put into the kernel.
        let enforced = |e: &Entry| !(monitor && e.source == EntrySource::Reputation);
        // The kernel looks the allow list up first: an allowed source is never denied.
        let standing = if !allow.is_empty() {
            Standing::Allowed
        } else if deny.iter().any(enforced) {
            Standing::Denied
        } else {
            Standing::Judged
        };
        let sessions = self.stage.history().of(address).iter().map(flow).collect();
        Explanation {
            address,
            standing,
            monitor,
            allow,
            deny,
            reputation: self.reputation_show(address),
            sessions,
        }
    }
}
