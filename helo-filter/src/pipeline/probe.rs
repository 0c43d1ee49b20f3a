//! The watchdog's probe: proof, for systemd's `WatchdogSec`, that the data path still
//! moves — not merely that the process is scheduled.
//!
//! Every WatchdogSec/3, [`feed`] hands a [`Probe`] (the sending half of a oneshot) to the
//! capture task. The capture task's drain loop — the same `select!` that drains the ring
//! buffer — forwards it into the policy stage's queue, behind the sessions already waiting
//! there. The stage takes it like a session: it waits for a validation permit and runs in
//! a task of its own, where [`Stage::probe`](super::stage::Stage::probe) takes the locks a
//! verdict takes (the engine in force, the kernel lists) and has the enforcer read the
//! kernel's flow table; then it answers. Only an answer within WatchdogSec/3 sends
//! `WATCHDOG=1`.
//!
//! So an idle MX at night keeps feeding the watchdog (the probe needs no traffic), while a
//! drain loop that no longer turns, a queue that does not move, every validation permit
//! held for good, or a lock never released leave the probe unanswered: no `WATCHDOG=1`,
//! and systemd kills and restarts the daemon once WatchdogSec has passed (the pinned
//! program keeps enforcing meanwhile). A probe that finds the stage's queue full is
//! dropped, as a session would be passed: a queue full for a whole WatchdogSec is a stage
//! that does not keep up. DNS is not part of the probe: a DNS outage must not restart the
//! daemon (its checks time out and say so).

use std::{sync::Arc, time::Duration};

use log::warn;
use tokio::sync::{mpsc, oneshot};

use crate::io::notify::Notifier;

/// One trip through the pipeline; answered by the stage.
#[derive(Debug)]
pub struct Probe {
    reply: oneshot::Sender<()>,
}

impl Probe {
    /// A probe and the receiver its answer arrives on.
    pub fn new() -> (Probe, oneshot::Receiver<()>) {
        let (reply, answer) = oneshot::channel();
        (Probe { reply }, answer)
    }

    /// The probe made it through.
    pub fn answer(self) {
        let _ = self.reply.send(());
    }
}

/// Sends a probe every `period` into `probes` (read by the capture task) and feeds the
/// watchdog each time it comes back within `period`. Runs for the daemon's lifetime.
pub async fn feed(probes: mpsc::Sender<Probe>, period: Duration, notifier: Arc<Notifier>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (probe, answer) = Probe::new();
        // The channel holds one probe: a full one means the last never left the capture
        // task.
        let came_back = probes.try_send(probe).is_ok()
            && matches!(tokio::time::timeout(period, answer).await, Ok(Ok(())));
        if came_back {
            notifier.watchdog();
        } else {
            warn!(
                "watchdog: the probe did not come back through the pipeline within {} ms; \
                 not feeding the watchdog",
                period.as_millis()
            );
        }
    }
}
