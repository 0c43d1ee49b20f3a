//! Action `reply`: the filter answers a rejected client's commands itself, as an MTA with
//! HELO checks would, so that a misconfigured sender bounces its message with
//! `550 5.7.1 Access denied - bogus HELO (<reason>)` instead of retrying for days.
//!
//! The kernel reports the client segments it drops instead of delivering
//! (`flags::CLIENT_SEGMENT`): those the gate holds before the verdict, and each one carrying
//! data or a FIN once the flow is condemned with `reply`. The first data segment after the
//! HELO is answered line by line (RFC 2920: a pipelined batch gets one reply per command):
//! the reject to the first command, `503 5.5.1` to each after it, with a FIN. A segment the
//! gate held is answered at the verdict; the same segment sent again (our answer was lost)
//! gets the same answer again; any later segment gets a RST.
//!
//! Normally the MTA has answered the HELO by the verdict, so the reject is the reply to the
//! command after it (normally MAIL FROM), which a sending MTA bounces on. The MTA is freed:
//! - on an MX its socket is destroyed once the client's next command is answered (which
//!   shows that the MTA answered the HELO), or [`FREE_UNANSWERED_AFTER`] after the verdict
//!   at the latest: destroyed at once, it could take the MTA's answer to the HELO with it,
//!   and the sender would read the reject to its EHLO instead of its MAIL FROM. TC egress
//!   keeps the socket's RST from the client and reports it (`flags::MTA_RESET`). The RST
//!   carries where the MTA's stream stopped: if that is where the client had read to when
//!   it sent its HELO, the MTA had not answered the HELO (the verdict beat a slow MTA),
//!   and the filter answers the HELO itself with the reject, a valid reply to HELO/EHLO;
//! - in a gateway once the client's next command is answered (which shows that the MTA
//!   answered the HELO, whose reply it would otherwise never send): it is sent a RST from
//!   the client's address with the sequence number it expects (RFC 5961: nothing else is
//!   taken without a challenge), the first byte it did not get.
//!
//! A decisive segment the kernel held (a pipelined HELO, or another command first) never
//! reached the MTA: it is answered whole, every line its reply.
//!
//! The segments are sent through raw sockets (see `io::raw_socket`), marked so that TC
//! egress lets them through: the daemon has the reply table, and the kernel program stays
//! as small as the RST it already builds (docs/architecture.md says why).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use helo_filter_common::{
    CaptureEvent, FlowKey,
    tcp_flags::{ACK, FIN, PSH, RST},
};
use log::{debug, warn};
use parking_lot::Mutex;

use super::{
    enforce::destroy,
    held::HeldSegments,
    reassembly::endpoints,
    segment::{Header, Reported, Timestamps, ip_packet},
    session::{DecisiveSegment, Opening, Session},
};
use crate::{
    config::{Deployment, Replies},
    io::raw_socket::RawSockets,
    metrics,
    metrics::ReplyOutcome,
    policy::Reason,
};

/// A condemned flow's state is forgotten this long after its verdict: a client still
/// sending by then gets no answer, and its segments stay dropped by the kernel.
const FORGET_AFTER: Duration = Duration::from_secs(120);
/// On an MX, a condemned client that has sent nothing more by then has its MTA socket
/// destroyed anyway (and its HELO answered by the filter if the MTA had not): the MTA's
/// slot is not held for a silent client, nor a client waiting for a slow MTA.
pub const FREE_UNANSWERED_AFTER: Duration = Duration::from_secs(1);
/// The answer to each command after the first of a pipelined batch.
const LATER_COMMAND: &str = "503 5.5.1 Bad sequence of commands - bogus HELO\r\n";
/// The answer to QUIT.
const BYE: &str = "221 2.0.0 Bye\r\n";

/// A flow condemned with `reply`.
struct Condemned {
    stream_start_seq: u32,
    /// Where the client's bytes the MTA got end: a segment wholly before (its HELO sent
    /// again) is the MTA's to answer.
    mta_has_until: u32,
    /// Where the client's commands after its decisive line start.
    after_decisive_seq: u32,
    decisive_segment: DecisiveSegment,
    /// Whether the decisive line is a HELO/EHLO (else a transaction command came first).
    decisive_is_helo: bool,
    /// The reject, CRLF included.
    reject: String,
    /// Once the first command is answered.
    conversation: Option<Conversation>,
    /// Whether the MTA was freed.
    freed: bool,
    since: Instant,
}

/// Where the filter's side of the SMTP conversation stands.
struct Conversation {
    /// The client's next new segment starts here.
    next_client_seq: u32,
    /// Our next reply starts here.
    next_reply_seq: u32,
    /// The last answer, sent again to a retransmission of its segment.
    last: Sent,
    /// A transaction command was refused.
    refused: bool,
}

impl Condemned {
    /// What a client segment of the flow gets: the answer to its commands when it is the
    /// next one in order, the same answer again when it is the last one answered (ours was
    /// lost); nothing for the HELO sent again (the MTA has it, and answers it) or a segment
    /// out of order (the client sends it again); a RST once the conversation ended, or to a
    /// bare FIN.
    fn decide(&mut self, segment: &Reported, wire_len: u16) -> Decision {
        let end = segment.seq.wrapping_add(u32::from(wire_len));
        let (reply_seq, refused) = match &self.conversation {
            Some(c) if c.last.client_seq == segment.seq => {
                return Decision::Reply {
                    sent: c.last.clone(),
                    first: false,
                };
            }
            Some(c) if c.last.fin || segment.payload.is_empty() => return Decision::Reset,
            Some(c) if c.next_client_seq != segment.seq => return Decision::Ignore,
            Some(c) => (c.next_reply_seq, c.refused),
            None if segment.payload.is_empty() => return Decision::Reset,
            None if self.mta_has_until.wrapping_sub(end) as i32 >= 0 => {
                return Decision::Ignore;
            }
            None => (segment.ack, false),
        };
        let (reply, refused, fin) = answer_commands(&self.reject, segment.payload, refused);
        let sent = Sent {
            client_seq: segment.seq,
            reply_seq,
            fin,
            reply,
        };
        self.conversation = Some(Conversation {
            next_client_seq: end,
            next_reply_seq: reply_seq
                .wrapping_add(sent.reply.len() as u32)
                .wrapping_add(u32::from(fin)),
            last: sent.clone(),
            refused,
        });
        Decision::Reply { sent, first: true }
    }

    /// The MTA's socket was destroyed, its RST at `reset` (where its stream stopped): if
    /// the MTA had sent nothing past what the client had read when it sent its decisive
    /// line, the line is unanswered, and ours to answer there. A HELO's reject leaves the
    /// session open, as an MTA's would; a transaction command's ends it.
    fn answer_for_the_mta(&mut self, reset: &Reported) -> Option<Sent> {
        if self.conversation.is_some()
            || self.decisive_segment.held
            || reset.seq != self.decisive_segment.ack
        {
            return None;
        }
        let refused = !self.decisive_is_helo;
        let sent = Sent {
            client_seq: self.decisive_segment.seq,
            reply_seq: reset.seq,
            reply: self.reject.clone(),
            fin: refused,
        };
        self.conversation = Some(Conversation {
            next_client_seq: self.after_decisive_seq,
            next_reply_seq: reset
                .seq
                .wrapping_add(sent.reply.len() as u32)
                .wrapping_add(u32::from(refused)),
            last: sent.clone(),
            refused,
        });
        Some(sent)
    }
}

/// What was sent, to send it again if the client did not get it.
#[derive(Clone, Debug, PartialEq)]
struct Sent {
    /// The client segment the answer is for: where it starts.
    client_seq: u32,
    /// Where the answer starts in the server's stream.
    reply_seq: u32,
    reply: String,
    /// Whether it ends the connection (a FIN follows it).
    fin: bool,
}

impl Sent {
    /// The TCP header of the answer, acknowledging the client's stream up to `ack`, with a
    /// FIN if it ends the connection.
    fn header(&self, ack: u32, timestamps: Option<Timestamps>) -> Header {
        Header {
            seq: self.reply_seq,
            ack,
            flags: if self.fin { ACK | PSH | FIN } else { ACK | PSH },
            timestamps,
        }
    }
}

/// What a reported client segment gets.
#[derive(Debug, PartialEq)]
enum Decision {
    /// The reply; `first` the first time it is sent.
    Reply {
        sent: Sent,
        first: bool,
    },
    Reset,
    /// Nothing: the segment holds no command of ours to answer.
    Ignore,
}

/// Answers the clients of flows condemned with `reply`, from the segments the kernel reports.
pub struct Answerer {
    deployment: Deployment,
    sockets: RawSockets,
    /// The reply table (the policy service answers from it too).
    replies: Replies,
    condemned: DashMap<FlowKey, Condemned>,
    /// Segments the gate held, until their verdict (shared with the enforcer and the
    /// ring-buffer reader).
    held: Arc<HeldSegments>,
    /// On an MX, the condemned flows whose MTA is not freed yet, in the order condemned.
    unfreed: Mutex<VecDeque<(Instant, FlowKey, u32)>>,
}

impl Answerer {
    pub fn new(
        deployment: Deployment,
        sockets: RawSockets,
        replies: Replies,
        held: Arc<HeldSegments>,
    ) -> Answerer {
        Answerer {
            deployment,
            sockets,
            replies,
            condemned: DashMap::new(),
            held,
            unfreed: Mutex::new(VecDeque::new()),
        }
    }

    /// A session rejected for `reason`: its reply is remembered, and a segment the gate
    /// holds is answered at once (the client need not send it again).
    pub fn condemn(&self, session: &Session, reason: Reason) {
        let decisive_segment = session.decisive_segment;
        self.condemned.insert(
            session.flow,
            Condemned {
                stream_start_seq: session.stream_start_seq,
                mta_has_until: if decisive_segment.held {
                    decisive_segment.seq
                } else {
                    session.after_decisive_seq
                },
                after_decisive_seq: session.after_decisive_seq,
                decisive_segment,
                decisive_is_helo: matches!(session.opening, Opening::Helo(_)),
                reject: format!("{}\r\n", self.replies.reply(reason).line_for(reason)),
                conversation: None,
                freed: false,
                since: Instant::now(),
            },
        );
        if let Some(held) = self.held.take(&session.flow, session.stream_start_seq) {
            self.client_segment(
                &session.flow,
                held.stream_start_seq,
                &held.bytes,
                held.wire_len,
            );
        }
        if self.deployment == Deployment::Mx {
            self.unfreed
                .lock()
                .push_back((Instant::now(), session.flow, session.stream_start_seq));
        }
    }

    /// On an MX, destroys the MTA's socket of the flows condemned [`FREE_UNANSWERED_AFTER`]
    /// ago or more whose client has sent nothing since.
    pub fn free_unanswered(&self, now: Instant) {
        loop {
            let (key, stream_start_seq) = {
                let mut unfreed = self.unfreed.lock();
                match unfreed.front() {
                    Some(&(since, key, start))
                        if now.duration_since(since) >= FREE_UNANSWERED_AFTER =>
                    {
                        unfreed.pop_front();
                        (key, start)
                    }
                    _ => return,
                }
            };
            let silent = matches!(
                self.condemned.get(&key),
                Some(flow) if flow.stream_start_seq == stream_start_seq && !flow.freed
            );
            if silent {
                let (client, server) = endpoints(&key);
                self.free_mta(&key, client, server);
            }
        }
    }

    /// The RST of a condemned flow's destroyed MTA socket, kept from the client: if the
    /// MTA had not answered the decisive line, the filter answers it.
    pub fn mta_reset(&self, event: &CaptureEvent) {
        let Some(reset) = Reported::parse(event.payload()) else {
            warn!("ignoring a reported reset of {} bytes", event.len);
            return;
        };
        let sent = match self.condemned.get_mut(&event.key) {
            Some(mut flow) if flow.stream_start_seq == event.stream_start_seq => flow
                .answer_for_the_mta(&reset)
                .map(|sent| (sent, flow.after_decisive_seq)),
            _ => None,
        };
        let Some((sent, line_end)) = sent else {
            return;
        };
        let (client, server) = endpoints(&event.key);
        // The MTA's own timestamps, as its answer would have carried them.
        let header = sent.header(line_end, reset.timestamps);
        self.send(
            server,
            client,
            header,
            sent.reply.as_bytes(),
            ReplyOutcome::Reject,
        );
    }

    /// Handles one reported client segment: answered if its flow is condemned, kept until
    /// the verdict if not.
    pub fn answer(&self, event: &CaptureEvent) {
        if self.is_condemned(event) {
            self.client_segment(
                &event.key,
                event.stream_start_seq,
                event.payload(),
                event.wire_len,
            );
        } else {
            self.held.hold(event);
            // The verdict may have come in between, its `condemn` finding nothing held yet:
            // then the segment is answered here (whichever side takes it answers it).
            if self.is_condemned(event)
                && let Some(held) = self.held.take(&event.key, event.stream_start_seq)
            {
                self.client_segment(
                    &event.key,
                    held.stream_start_seq,
                    &held.bytes,
                    held.wire_len,
                );
            }
        }
    }

    fn is_condemned(&self, event: &CaptureEvent) -> bool {
        self.condemned
            .get(&event.key)
            .is_some_and(|c| c.stream_start_seq == event.stream_start_seq)
    }

    /// Forgets flows condemned longer ago than [`FORGET_AFTER`].
    pub fn expire(&self, now: Instant) {
        self.condemned
            .retain(|_, c| now.duration_since(c.since) < FORGET_AFTER);
    }

    /// A client segment of a condemned flow: its first data segment gets the reply (a
    /// retransmission of it the same again), anything else a RST.
    fn client_segment(&self, key: &FlowKey, stream_start_seq: u32, bytes: &[u8], wire_len: u16) {
        let Some(segment) = Reported::parse(bytes) else {
            warn!("ignoring a reported segment of {} bytes", bytes.len());
            return;
        };
        let (client, server) = endpoints(key);
        let client_end = segment
            .seq
            .wrapping_add(u32::from(wire_len))
            .wrapping_add(u32::from(segment.flags & FIN != 0));
        let (sent, first) = match self.decide(key, stream_start_seq, &segment, wire_len) {
            Decision::Reply { sent, first } => (sent, first),
            Decision::Reset => {
                self.reset(server, client, &segment, client_end);
                // A client that ends before sending a command: its MTA is freed all the same.
                self.free_mta(key, client, server);
                return;
            }
            Decision::Ignore => return,
        };
        let header = sent.header(client_end, echo(segment.timestamps));
        let outcome = if first {
            ReplyOutcome::Reject
        } else {
            ReplyOutcome::Repeat
        };
        self.send(server, client, header, sent.reply.as_bytes(), outcome);
        if first {
            self.free_mta(key, client, server);
        }
    }

    /// What a client segment gets (see [`Condemned::decide`]); a RST for a flow not ours
    /// (forgotten, or a previous daemon's).
    fn decide(
        &self,
        key: &FlowKey,
        stream_start_seq: u32,
        segment: &Reported,
        wire_len: u16,
    ) -> Decision {
        match self.condemned.get_mut(key) {
            Some(mut flow) if flow.stream_start_seq == stream_start_seq => {
                flow.decide(segment, wire_len)
            }
            _ => Decision::Reset,
        }
    }

    /// Ends the client's connection: a RST at the sequence number it expects.
    fn reset(&self, server: SocketAddr, client: SocketAddr, segment: &Reported, client_end: u32) {
        let header = Header {
            seq: segment.ack,
            ack: client_end,
            flags: RST | ACK,
            timestamps: None,
        };
        self.send(server, client, header, b"", ReplyOutcome::Reset);
    }

    /// Frees the MTA, once: on an MX its socket is destroyed; in a gateway it is sent a RST
    /// from the client at the first byte the MTA did not get (RFC 5961: the only one taken).
    fn free_mta(&self, key: &FlowKey, client: SocketAddr, server: SocketAddr) {
        // Where the MTA's stream from the client stopped, whichever segment frees it (a
        // client's FIN may be handled before the answer that ends the conversation).
        let seq = match self.condemned.get_mut(key) {
            Some(mut flow) if !flow.freed => {
                flow.freed = true;
                flow.mta_has_until
            }
            _ => return,
        };
        match self.deployment {
            Deployment::Mx => {
                destroy(server, client);
            }
            Deployment::Gateway => {
                let header = Header {
                    seq,
                    ack: 0,
                    flags: RST,
                    timestamps: None,
                };
                self.send(client, server, header, b"", ReplyOutcome::MtaFreed);
            }
        }
    }

    fn send(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        header: Header,
        payload: &[u8],
        outcome: ReplyOutcome,
    ) {
        let packet = ip_packet(from, to, header, payload);
        match self.sockets.send(&packet, to.ip()) {
            Ok(()) => {
                debug!("{to}: sent {} ({} bytes)", outcome.as_str(), packet.len());
                metrics::reply(outcome);
            }
            Err(e) => {
                warn!("{to}: cannot send the {}: {e}", outcome.as_str());
                metrics::reply(ReplyOutcome::Failed);
            }
        }
    }
}

/// Our timestamps for an answer to a segment that had `theirs`: our value is the one it
/// echoed (the last the client saw from the server), and we echo its own.
fn echo(theirs: Option<Timestamps>) -> Option<Timestamps> {
    theirs.map(|t| Timestamps {
        value: t.echo_reply,
        echo_reply: t.value,
    })
}

/// The answer to the command lines in `payload` (a partial line counts as one), one reply
/// per command, in order (RFC 2920), with whether a transaction command is now `refused`
/// and whether the connection ends after it:
/// - the first transaction command (MAIL, RCPT, DATA, anything not below) gets `reject`,
///   each after it [`LATER_COMMAND`], and the connection ends after the batch;
/// - HELO, EHLO, STARTTLS, NOOP, RSET and HELP get `reject` and the session goes on, as an
///   MTA's would: a sender falls back from EHLO to HELO, and from a refused STARTTLS to plain
///   text (Postfix's `smtp_tls_security_level = may`), and must then read the reject to its
///   MAIL FROM rather than a lost connection, or it defers instead of bouncing;
/// - QUIT gets `221` and ends the connection.
fn answer_commands(reject: &str, payload: &[u8], mut refused: bool) -> (String, bool, bool) {
    let mut answer = String::new();
    let mut fin = false;
    let lines = payload
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| !l.is_empty());
    for line in lines {
        let verb = line
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_slice() {
            b"QUIT" => {
                answer.push_str(BYE);
                fin = true;
                break;
            }
            b"HELO" | b"EHLO" | b"STARTTLS" | b"NOOP" | b"RSET" | b"HELP" => {
                answer.push_str(reject)
            }
            _ if refused => answer.push_str(LATER_COMMAND),
            _ => {
                answer.push_str(reject);
                refused = true;
            }
        }
    }
    if answer.is_empty() {
        answer.push_str(reject);
    }
    (answer, refused, fin || refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECT: &str = "550 5.7.1 Access denied - bogus HELO (localhost)\r\n";
    const MAIL: &[u8] = b"MAIL FROM:<a@example.net>\r\n";

    #[test]
    fn each_command_gets_its_reply_in_order_and_a_refused_transaction_ends_the_session() {
        let answer = |payload: &[u8], refused| answer_commands(REJECT, payload, refused);
        assert_eq!(answer(MAIL, false), (REJECT.to_owned(), true, true));
        assert_eq!(
            answer(b"MAIL FROM:<a@exa", false),
            (REJECT.to_owned(), true, true),
            "a partial line"
        );
        assert_eq!(
            answer(
                b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
                false
            ),
            (
                format!("{REJECT}{LATER_COMMAND}{LATER_COMMAND}"),
                true,
                true
            ),
            "RFC 2920: one reply per pipelined command"
        );
        for goes_on in [
            &b"STARTTLS\r\n"[..],
            b"HELO localhost\r\n",
            b"ehlo localhost\r\n",
            b"NOOP\r\n",
            b"RSET\r\n",
        ] {
            assert_eq!(
                answer(goes_on, false),
                (REJECT.to_owned(), false, false),
                "{}",
                String::from_utf8_lossy(goes_on)
            );
        }
        assert_eq!(answer(b"QUIT\r\n", false), (BYE.to_owned(), false, true));
        assert_eq!(
            answer(b"RSET\r\nQUIT\r\nNOOP\r\n", true),
            (format!("{REJECT}{BYE}"), true, true),
            "nothing after QUIT"
        );
    }

    /// A flow whose HELO line ended at sequence number 1017.
    fn condemned() -> Condemned {
        Condemned {
            stream_start_seq: 1001,
            mta_has_until: 1017,
            after_decisive_seq: 1017,
            decisive_segment: DecisiveSegment {
                seq: 1001,
                ack: 5000,
                held: false,
            },
            decisive_is_helo: true,
            reject: REJECT.to_owned(),
            conversation: None,
            freed: false,
            since: Instant::now(),
        }
    }

    fn segment(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Reported<'_> {
        Reported {
            seq,
            ack,
            flags,
            timestamps: None,
            payload,
        }
    }

    fn len(payload: &[u8]) -> u16 {
        payload.len() as u16
    }

    #[test]
    fn the_first_command_is_answered_its_retransmission_alike_and_anything_later_reset() {
        let mut flow = condemned();
        let sent = Sent {
            client_seq: 1017,
            reply_seq: 5000,
            reply: REJECT.to_owned(),
            fin: true,
        };
        assert_eq!(
            flow.decide(&segment(1017, 5000, ACK | PSH, MAIL), len(MAIL)),
            Decision::Reply {
                sent: sent.clone(),
                first: true
            }
        );
        assert_eq!(
            flow.decide(&segment(1017, 5000, ACK | PSH, MAIL), len(MAIL)),
            Decision::Reply { sent, first: false },
            "a retransmission"
        );
        let quit = b"QUIT\r\n";
        let after = 1017 + len(MAIL) as u32;
        assert_eq!(
            flow.decide(&segment(after, 5100, ACK | PSH, quit), len(quit)),
            Decision::Reset,
            "a command after the end"
        );
        assert_eq!(
            flow.decide(&segment(after, 5100, ACK | FIN, b""), 0),
            Decision::Reset
        );
    }

    /// A sender whose STARTTLS is refused goes on in plain text: its MAIL FROM must read
    /// the reject, right after the first reply in the server's stream.
    #[test]
    fn a_refused_starttls_keeps_the_session_for_the_mail_from() {
        let mut flow = condemned();
        let starttls = b"STARTTLS\r\n";
        let Decision::Reply { sent, first: true } =
            flow.decide(&segment(1017, 5000, ACK | PSH, starttls), len(starttls))
        else {
            panic!("STARTTLS is answered");
        };
        assert_eq!((sent.reply.as_str(), sent.fin), (REJECT, false));
        let mail_at = 1017 + len(starttls) as u32;
        let reply_at = 5000 + REJECT.len() as u32;
        assert_eq!(
            flow.decide(&segment(mail_at + 5, reply_at, ACK | PSH, MAIL), len(MAIL)),
            Decision::Ignore,
            "out of order: the client sends it again"
        );
        let Decision::Reply { sent, first: true } =
            flow.decide(&segment(mail_at, reply_at, ACK | PSH, MAIL), len(MAIL))
        else {
            panic!("MAIL FROM is answered");
        };
        assert_eq!(
            sent,
            Sent {
                client_seq: mail_at,
                reply_seq: reply_at,
                reply: REJECT.to_owned(),
                fin: true
            }
        );
    }

    #[test]
    fn the_helo_sent_again_is_the_mtas_and_a_bare_fin_is_reset() {
        let helo = b"EHLO localhost\r\n";
        let mut flow = condemned();
        assert_eq!(
            flow.decide(&segment(1001, 5000, ACK | PSH, helo), len(helo)),
            Decision::Ignore
        );
        assert_eq!(
            flow.decide(&segment(1017, 5000, ACK | FIN, b""), 0),
            Decision::Reset
        );
        assert!(flow.conversation.is_none(), "nothing answered yet");
        // A pipelined HELO segment, held whole: every line is ours, the HELO's included.
        let batch = b"EHLO localhost\r\nMAIL FROM:<a@example.net>\r\n";
        let Decision::Reply { sent, first: true } =
            flow.decide(&segment(1001, 5000, ACK | PSH, batch), len(batch))
        else {
            panic!("the held batch is answered");
        };
        assert_eq!(sent.reply, format!("{REJECT}{REJECT}"));
        assert!(sent.fin);
    }

    /// The verdict beat the MTA's answer to the HELO: its RST stops where the client had
    /// read to (5000), so the filter answers the HELO, and then the MAIL FROM after it.
    #[test]
    fn an_unanswered_helo_is_answered_where_the_mtas_stream_stopped() {
        let mut flow = condemned();
        let reset_at = |seq| segment(seq, 1017, RST | ACK, b"");
        let answered_by_the_mta = 5000 + 40;
        assert_eq!(
            flow.answer_for_the_mta(&reset_at(answered_by_the_mta)),
            None
        );
        let sent = flow.answer_for_the_mta(&reset_at(5000));
        assert_eq!(
            sent,
            Some(Sent {
                client_seq: 1001,
                reply_seq: 5000,
                reply: REJECT.to_owned(),
                fin: false,
            }),
            "a HELO's reject leaves the session open"
        );
        assert_eq!(flow.answer_for_the_mta(&reset_at(5000)), None, "once");
        let reply_at = 5000 + REJECT.len() as u32;
        let Decision::Reply { sent, first: true } =
            flow.decide(&segment(1017, reply_at, ACK | PSH, MAIL), len(MAIL))
        else {
            panic!("MAIL FROM is answered");
        };
        assert_eq!((sent.reply_seq, sent.fin), (reply_at, true));
    }

    #[test]
    fn a_held_decisive_segment_or_another_command_first_is_answered_as_such() {
        let mut held = condemned();
        held.decisive_segment.held = true;
        held.mta_has_until = 1001;
        assert_eq!(
            held.answer_for_the_mta(&segment(5000, 1001, RST | ACK, b"")),
            None,
            "the MTA never got it: the held segment is answered instead"
        );
        let mail_first = b"MAIL FROM:<a@example.net>\r\n";
        assert!(matches!(
            held.decide(&segment(1001, 5000, ACK | PSH, mail_first), len(mail_first)),
            Decision::Reply { first: true, .. }
        ));
        let mut other_first = condemned();
        other_first.decisive_is_helo = false;
        let sent = other_first
            .answer_for_the_mta(&segment(5000, 1017, RST | ACK, b""))
            .expect("answered");
        assert!(sent.fin, "a refused transaction command ends the session");
    }

    #[test]
    fn answers_echo_the_clients_timestamps() {
        let theirs = Timestamps {
            value: 100,
            echo_reply: 7,
        };
        assert_eq!(
            echo(Some(theirs)),
            Some(Timestamps {
                value: 7,
                echo_reply: 100
            })
        );
        assert_eq!(echo(None), None);
    }
}
