//! Turning verdicts into action.
//!
//! - Deployment `mx` (the MTA runs on this host): a rejected session's server-side socket
//!   is destroyed, so the MTA sees the connection aborted at once. With action `rst` the
//!   client gets the RST that destroying sends; with `drop` the flow is condemned first, so
//!   the XDP program drops the client's packets and the TC egress program the MTA's (that
//!   RST included): the client gets silence.
//! - Deployment `gateway` (the MTA is elsewhere): the flow is condemned in the kernel, which
//!   drops the client's further packets (`drop`) or answers each with a RST (`rst`).
//! - Action `reply`, in either deployment: the flow is condemned so that the kernel reports
//!   the client's next segments, which the daemon answers with the reject (see
//!   [`super::answer`]); on an MX the MTA's socket is destroyed too, its RST kept from the
//!   client by TC egress.
//!
//! A known-good source's flow (`pipeline::known_good`) is not gated, so its next command
//! may have reached the MTA before the verdict: a reject of it under `reply` is enforced as
//! `rst` (counted `helo_filter_known_good_total{event="fallback"}`).
//!
//! `--monitor` enforces nothing and counts what would have been done. An accept opens the
//! kernel's gate for its flow: the segment the gate held is re-injected (see
//! [`super::reinject`]), and TCP delivers the rest.

use std::{net::SocketAddr, sync::Arc};

use aya::maps::{HashMap, MapData, MapError};
use helo_filter_common::{FlowKey, FlowState, phase};
use log::{debug, warn};
use parking_lot::Mutex;

use crate::{
    config::{Action, Deployment},
    metrics,
    metrics::{DestroyOutcome, KnownGoodEvent},
    pipeline::{answer::Answerer, held::HeldSegments, known_good::KnownGood, session::Session},
    policy::Verdict,
};

/// What was done on a reject: the action, and on an MX enforcing `rst` or `drop` whether
/// the MTA's socket was destroyed (the verdict line's `destroyed=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforcement {
    pub action: Action,
    pub destroyed: Option<bool>,
}

/// Turns verdicts into action in the kernel and on the MTA's sockets.
pub struct Enforcer {
    deployment: Deployment,
    /// The action on a reject (`Monitor`: none).
    action: Action,
    /// The kernel's flow table, where verdicts open the gate.
    flows: Mutex<HashMap<MapData, FlowKey, FlowState>>,
    /// Answers the clients of flows condemned with action `reply` (that action only).
    answerer: Option<Arc<Answerer>>,
    /// The known-good cache (when on, and not in monitor mode).
    known_good: Option<KnownGood>,
    /// The segments the gate held (when the kernel reports them: action `reply`, or
    /// re-injection on).
    held: Option<Arc<HeldSegments>>,
}

impl Enforcer {
    pub fn new(
        flows: HashMap<MapData, FlowKey, FlowState>,
        deployment: Deployment,
        action: Action,
        answerer: Option<Arc<Answerer>>,
        known_good: Option<KnownGood>,
        held: Option<Arc<HeldSegments>>,
    ) -> Self {
        Enforcer {
            deployment,
            action,
            flows: Mutex::new(flows),
            answerer,
            known_good,
            held,
        }
    }

    pub fn monitor(&self) -> bool {
        self.action == Action::Monitor
    }

    /// Acts on one verdict; returns what was done on a reject. Nothing the client sent
    /// after its HELO reaches the MTA: the socket is destroyed before the gate opens, and a
    /// flow to silence is condemned before its socket is destroyed.
    pub fn apply(&self, session: &Session, verdict: &Verdict) -> Option<Enforcement> {
        if let Some(known_good) = &self.known_good {
            known_good.record(session.client.ip(), session.gated, !verdict.is_reject());
        }
        if !verdict.is_reject() {
            // Re-injected only where the gate still held the flow: past its deadline (or
            // with the daemon gone) the kernel let the client's retransmission through.
            let held = self.set_phase(session, phase::DONE) == Some(phase::GATED);
            self.decided(session, held);
            return None;
        }
        // A known-good source's flow was not gated: its next command may have reached the
        // MTA, which answers it, so a reply of ours would come out of turn.
        let action = if self.action == Action::Reply && !session.gated {
            metrics::known_good(KnownGoodEvent::Fallback);
            Action::Rst
        } else {
            self.action
        };
        let mut destroyed = None;
        match (self.deployment, action) {
            (_, Action::Monitor) => {
                self.set_phase(session, phase::DONE);
            }
            (Deployment::Mx, Action::Rst) => {
                destroyed = Some(destroy_session(session));
                self.set_phase(session, phase::DONE);
            }
            (Deployment::Mx, Action::Drop) => {
                self.set_phase(session, phase::CONDEMNED);
                destroyed = Some(destroy_session(session));
            }
            // The MTA is freed by the answerer (on an MX at once, see `answer`).
            (_, Action::Reply) => {
                self.set_phase(session, phase::CONDEMNED_REPLY);
                if let (Some(answerer), Some(reason)) = (&self.answerer, verdict.primary()) {
                    // The answerer takes the held segment, to answer it.
                    answerer.condemn(session, reason);
                }
                return Some(Enforcement { action, destroyed });
            }
            (Deployment::Gateway, Action::Rst) => {
                self.set_phase(session, phase::CONDEMNED_RST);
            }
            (Deployment::Gateway, Action::Drop) => {
                self.set_phase(session, phase::CONDEMNED);
            }
        }
        self.decided(session, false);
        Some(Enforcement { action, destroyed })
    }

    /// Tells the held segments a gated flow's verdict (once the kernel has it): the held
    /// segment of an accepted flow the gate still held goes to the MTA (`reinject`), any
    /// other is forgotten.
    fn decided(&self, session: &Session, reinject: bool) {
        if let Some(held) = &self.held
            && session.gated
        {
            held.decided(session.flow, session.stream_start_seq, reinject);
        }
    }

    /// The watchdog's probe: the flow table can be locked and read (a key no flow has).
    pub fn probe(&self) -> bool {
        let flows = self.flows.lock();
        matches!(
            flows.get(&FlowKey::default(), 0),
            Ok(_) | Err(MapError::KeyNotFound)
        )
    }

    /// Sets the flow's phase, unless its 4-tuple has since been reused by a new connection;
    /// times the verdict from its HELO (`helo_filter_helo_to_verdict_seconds`). Returns the
    /// phase it replaced, if it was written.
    fn set_phase(&self, session: &Session, to: u8) -> Option<u8> {
        let mut flows = self.flows.lock();
        let mut state = flows.get(&session.flow, 0).ok()?;
        if state.stream_start_seq != session.stream_start_seq {
            return None;
        }
        let was = state.phase;
        state.phase = to;
        match flows.insert(session.flow, state, 0) {
            Ok(()) => {
                metrics::verdict_written(session.timestamp_ns);
                Some(was)
            }
            Err(e) => {
                warn!(
                    "{}: cannot write the verdict to the kernel: {e}",
                    session.client
                );
                None
            }
        }
    }
}

/// Destroys the MTA's socket of the session, counts the outcome, and says whether the
/// socket was destroyed.
fn destroy_session(session: &Session) -> bool {
    destroy(session.server, session.client)
}

/// Destroys the MTA's socket of the connection between `server` and `client`, counts the
/// outcome, and says whether the socket was destroyed.
pub(super) fn destroy(server: SocketAddr, client: SocketAddr) -> bool {
    let outcome = match super::sock_destroy::destroy_tcp_socket(server, client) {
        Ok(true) => DestroyOutcome::Destroyed,
        Ok(false) => {
            debug!("{client}: the session had already ended");
            DestroyOutcome::NotFound
        }
        Err(e) => {
            warn!("{client}: cannot destroy the MTA's socket: {e}");
            DestroyOutcome::Failed
        }
    };
    metrics::sock_destroy(outcome);
    outcome == DestroyOutcome::Destroyed
}
