//! Which of the operator's methods answers which request; each typed result goes on the
//! wire as JSON.

use serde::Serialize;
use serde_json::Value;

use super::{
    Operator,
    api::{Command, ControlError, ErrorKind},
    control::Handler,
};

/// A result as it goes on the wire.
fn wire<T: Serialize>(result: Result<T, ControlError>) -> Result<Value, ControlError> {
    result.and_then(|r| {
        serde_json::to_value(r).map_err(|e| ControlError::new(ErrorKind::Internal, e.to_string()))
    })
}

impl Handler for Operator {
    async fn handle(&self, command: Command) -> Result<Value, ControlError> {
        match command {
            Command::AllowAdd {
                net,
                ttl_secs,
                comment,
            } => wire(self.add_net(false, net, ttl_secs, comment, false)),
            Command::AllowDel { net } => wire(self.del_net(false, net, false)),
            Command::AllowList => wire(Ok(self.allow_list())),
            Command::DenyAdd {
                net,
                ttl_secs,
                comment,
                fleet,
            } => wire(self.add_net(true, net, ttl_secs, comment, fleet)),
            Command::DenyHeloAdd {
                pattern,
                ttl_secs,
                comment,
            } => wire(self.add_helo(pattern, ttl_secs, comment)),
            Command::DenyDel { net, fleet } => wire(self.del_net(true, net, fleet)),
            Command::DenyHeloDel { pattern } => wire(self.del_helo(pattern)),
            Command::DenyList => wire(Ok(self.deny_list())),
            Command::ReputationList { top } => wire(Ok(self.reputation_list(top))),
            Command::ReputationShow { ip } => wire(Ok(self.reputation_show(ip))),
            Command::ReputationReset { ip } => wire(self.reputation_reset(ip)),
            Command::Status => wire(Ok(self.status())),
            Command::Flows { limit } => wire(Ok(self.flows(limit))),
            Command::Explain { ip } => wire(Ok(self.explain(ip))),
            Command::Reload => wire(self.reload().await),
            Command::Detach => wire(self.detach()),
        }
    }
}
