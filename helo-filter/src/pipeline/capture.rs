//! Reads capture events from the kernel's ring buffer and turns them into sessions for
//! the policy stage.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use helo_filter_common::{CAPTURE_EVENT_HEADER, CaptureEvent, flags};
use log::{debug, warn};
use tokio::sync::mpsc;

pub use super::reassembly::{Limits, Reassembler};
use super::{
    answer::Answerer,
    held::HeldSegments,
    probe::Probe,
    session::Session,
    stage::{Judge, Queued},
};
use crate::{kernel, metrics};

/// Events handled per wake-up before yielding, so a busy ring cannot starve other tasks.
const DRAIN_BUDGET: usize = 256;
/// How often undecided flows are checked for their time-out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Drains the ring buffer forever, judging each decided session at once (`judge`) or, with
/// every validation slot taken, sending it to the policy queue (`sessions`); each segment of
/// a flow condemned with `reply` goes to `answerer`, and each segment the gate held to
/// `held` (through `answerer` under `reply`). A full queue never blocks the reader: the
/// session is passed (not judged) and counted. The watchdog's `probes` take the same loop
/// into the same queue (see [`super::probe`]).
pub async fn run(
    ring: RingBuf<MapData>,
    judge: Arc<Judge>,
    sessions: mpsc::Sender<Queued>,
    mut probes: mpsc::Receiver<Probe>,
    limits: Limits,
    answerer: Option<Arc<Answerer>>,
    held: Option<Arc<HeldSegments>>,
) -> anyhow::Result<()> {
    let mut ring = kernel::readable_fd(ring)?;
    let mut reassembler = Reassembler::new(limits);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut probing = true;
    loop {
        tokio::select! {
            probe = probes.recv(), if probing => match probe {
                // Full: dropped, unanswered (a session would be passed unjudged).
                Some(probe) => { let _ = sessions.try_send(Queued::Probe(probe)); }
                None => probing = false,
            },
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let mut drained = 0;
                while drained < DRAIN_BUDGET {
                    let Some(item) = guard.get_inner_mut().next() else {
                        guard.clear_ready();
                        break;
                    };
                    drained += 1;
                    let Some(event) = decode(&item) else {
                        warn!("ignoring a ring-buffer record of {} bytes", item.len());
                        continue;
                    };
                    drop(item);
                    if event.flags & flags::MTA_RESET != 0 {
                        if let Some(answerer) = &answerer {
                            answerer.mta_reset(&event);
                        }
                        continue;
                    }
                    if event.flags & flags::CLIENT_SEGMENT != 0 {
                        if let Some(answerer) = &answerer {
                            answerer.answer(&event);
                        } else if let Some(held) = &held {
                            held.hold(&event);
                        }
                        continue;
                    }
                    let (session, evicted) = reassembler.push(&event, Instant::now());
                    if evicted > 0 {
                        metrics::flows_abandoned(metrics::AbandonCause::TableFull, evicted);
                        warn!("reassembly full: gave up {evicted} undecided flow(s)");
                    }
                    if let Some(session) = session
                        && let Some(session) = judge.now(session)
                    {
                        forward(&sessions, session);
                    }
                }
                drop(guard);
                if drained == DRAIN_BUDGET {
                    tokio::task::yield_now().await;
                }
            }
            _ = sweep.tick() => {
                let expired = reassembler.expire(Instant::now());
                if expired > 0 {
                    metrics::flows_abandoned(metrics::AbandonCause::Timeout, expired);
                    debug!("{expired} undecided flow(s) timed out");
                }
                let queued = sessions.max_capacity() - sessions.capacity();
                metrics::capture_load(reassembler.flows_in_progress(), queued);
            }
        }
    }
}

/// Reads one ring-buffer record as a capture event: its header, then the `len` bytes of
/// data it copied (a record is as long as those, or the whole event); `None` if it is
/// shorter than that.
pub fn decode(record: &[u8]) -> Option<CaptureEvent> {
    if record.len() < CAPTURE_EVENT_HEADER {
        return None;
    }
    let mut bytes = [0u8; size_of::<CaptureEvent>()];
    let taken = record.len().min(bytes.len());
    bytes[..taken].copy_from_slice(&record[..taken]);
    // SAFETY: `bytes` has the size of a CaptureEvent, a plain-old-data type (any bytes are
    // a valid value), read unaligned.
    let event: CaptureEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    (CAPTURE_EVENT_HEADER + usize::from(event.len) <= taken).then_some(event)
}

fn forward(sessions: &mpsc::Sender<Queued>, session: Session) {
    match sessions.try_send(Queued::Session(session)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(queued)) => {
            let Queued::Session(session) = queued else {
                return;
            };
            metrics::fail_open(metrics::FailOpenCause::QueueFull);
            warn!(
                "policy queue full: passing the session of {} unjudged",
                session.client
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use helo_filter_common::MAX_CAPTURE_BYTES;

    use super::*;

    /// A record as the kernel writes one: the header, then `copied` bytes of data.
    fn record(len: u16, copied: usize) -> Vec<u8> {
        let mut event = CaptureEvent {
            key: Default::default(),
            ifindex: 3,
            flags: flags::FINAL,
            timestamp_ns: 9,
            seq: 100,
            stream_start_seq: 100,
            len,
            wire_len: len,
            ack: 7,
            data: [b'x'; MAX_CAPTURE_BYTES],
        };
        event.data[..4].copy_from_slice(b"EHLO");
        // SAFETY: a plain-old-data struct viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<CaptureEvent>())
        };
        bytes[..CAPTURE_EVENT_HEADER + copied].to_vec()
    }

    #[test]
    fn a_record_as_long_as_its_data_reads_back_whole() {
        let event = decode(&record(20, 20)).expect("a valid record");
        assert_eq!(
            (event.ifindex, event.seq, event.ack, event.len),
            (3, 100, 7, 20)
        );
        assert_eq!(&event.payload()[..4], b"EHLO");
        assert_eq!(event.payload().len(), 20);
        let whole = decode(&record(20, MAX_CAPTURE_BYTES)).expect("a whole event");
        assert_eq!(whole.payload(), event.payload());
    }

    #[test]
    fn a_record_short_of_its_header_or_its_data_is_refused() {
        assert!(decode(&record(0, 0)[..CAPTURE_EVENT_HEADER - 1]).is_none());
        assert!(decode(&record(20, 19)).is_none(), "a byte of data missing");
        assert!(decode(&record(0, 0)).is_some(), "no data, none missing");
    }
}
