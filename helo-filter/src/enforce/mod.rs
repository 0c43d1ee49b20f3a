//! Turning verdicts into action. Deployment `mx` (the MTA runs on this host), action `rst`:
//! a rejected session's server-side socket is destroyed (the MTA sees the connection
//! aborted, the client gets a RST); `--monitor` enforces nothing and counts what would
//! have been done. Every verdict then opens the kernel's gate for its flow: an accepted
//! client's held segments are retransmitted and delivered.

pub mod sock_destroy;

use std::sync::Mutex;

use aya::maps::{HashMap, MapData};
use helo_filter_common::{FlowKey, FlowState, phase};
use log::{debug, warn};

use crate::{capture::Session, policy::Verdict};

/// What was done about a rejected session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The server-side socket was destroyed; the client got a RST.
    Rst,
    /// Monitor mode: nothing was done.
    Monitor,
}

impl Action {
    /// The `action` label values of `helo_filter_actions_total`.
    pub const LABELS: [&'static str; 3] = ["rst", "drop", "monitor"];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rst => "rst",
            Action::Monitor => "monitor",
        }
    }
}

pub struct Enforcer {
    monitor: bool,
    /// The kernel's flow table, where verdicts open the gate.
    flows: Mutex<HashMap<MapData, FlowKey, FlowState>>,
}

impl Enforcer {
    pub fn new(flows: HashMap<MapData, FlowKey, FlowState>, monitor: bool) -> Self {
        Enforcer {
            monitor,
            flows: Mutex::new(flows),
        }
    }

    pub fn monitor(&self) -> bool {
        self.monitor
    }

    /// Acts on one verdict; returns the action taken on a reject. The socket is destroyed
    /// before the gate opens, so nothing the client sent after its HELO reaches the MTA.
    pub fn apply(&self, session: &Session, verdict: &Verdict) -> Option<Action> {
        let action = verdict.is_reject().then(|| {
            if self.monitor {
                return Action::Monitor;
            }
            match sock_destroy::destroy_tcp_socket(session.server, session.client) {
                Ok(true) => {}
                Ok(false) => debug!("{}: the session had already ended", session.client),
                Err(e) => warn!("{}: cannot destroy the MTA's socket: {e}", session.client),
            }
            Action::Rst
        });
        self.open_gate(session);
        action
    }

    /// Marks the flow judged, unless its 4-tuple has since been reused by a new connection.
    fn open_gate(&self, session: &Session) {
        let Ok(mut flows) = self.flows.lock() else {
            return;
        };
        let Ok(mut state) = flows.get(&session.flow, 0) else {
            return;
        };
        if state.stream_start_seq == session.stream_start_seq {
            state.phase = phase::DONE;
            if let Err(e) = flows.insert(session.flow, state, 0) {
                warn!("{}: cannot open the gate: {e}", session.client);
            }
        }
    }
}
