//! A client session as the pipeline passes it on: its flow, and what its first decisive
//! line showed (the HELO/EHLO command, or why there was none). Made by the reassembly,
//! judged by the stage, acted on by the enforcer.

use std::net::SocketAddr;

use helo_filter_common::FlowKey;

use crate::pipeline::smtp::Verb;

/// What one client session's first command lines showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The flow as the kernel keys it, and the sequence number its stream started at.
    pub flow: FlowKey,
    pub stream_start_seq: u32,
    /// Where the client's stream goes on after its decisive line (the HELO, normally): the
    /// bytes before reached the MTA, those from here on were held.
    pub after_decisive_seq: u32,
    /// The segment that ended the decisive line.
    pub decisive_segment: DecisiveSegment,
    /// Whether the kernel gated the flow: false for a known-good source, whose next
    /// commands may have reached the MTA before the verdict.
    pub gated: bool,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub ifindex: u32,
    /// Kernel boot-time timestamp of the segment that decided the session.
    pub timestamp_ns: u64,
    pub opening: Opening,
}

/// The client segment that ended a session's decisive line, as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisiveSegment {
    /// Where it starts.
    pub seq: u32,
    /// What of the server's stream it acknowledged: where the MTA's answer to the line
    /// starts.
    pub ack: u32,
    /// The kernel held it (`flags::HELD`): none of it reached the MTA.
    pub held: bool,
}

/// What the session's first decisive line was: its HELO/EHLO, or the reason there was none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening {
    Helo(HeloCommand),
    NoHelo(NoHeloCause),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeloCommand {
    pub verb: Verb,
    /// The argument as sent, raw bytes (the policy judges non-ASCII itself).
    pub argument: Vec<u8>,
    /// The whole line without its terminator, escaped for logs.
    pub escaped_line: String,
    /// The client sent more bytes after the HELO line in the same segment.
    pub pipelined: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoHeloCause {
    /// A command other than HELO/EHLO/NOOP/RSET came first (its line, escaped).
    OtherCommandFirst { escaped_line: String },
    /// The capture cap (bytes or segments) was reached without a complete HELO line.
    CapExceeded,
}

impl NoHeloCause {
    pub fn as_str(&self) -> &'static str {
        match self {
            NoHeloCause::OtherCommandFirst { .. } => "other_command",
            NoHeloCause::CapExceeded => "cap_exceeded",
        }
    }

    /// The line the client sent instead of a HELO, escaped (empty: none complete).
    pub fn escaped_line(&self) -> &str {
        match self {
            NoHeloCause::OtherCommandFirst { escaped_line } => escaped_line,
            NoHeloCause::CapExceeded => "",
        }
    }
}
