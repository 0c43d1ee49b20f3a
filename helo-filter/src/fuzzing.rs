//! The parsers' fuzzing entry points: one function per parser, each taking arbitrary bytes,
//! running the parser on them and asserting its invariants (a broken one panics). The cargo-fuzz
//! targets in `fuzz/` (`cargo xtask fuzz`) call them, and so does the corpus replay that plain
//! `cargo test` runs (`tests/fuzz_corpus_replay.rs`), so that what libFuzzer found stays checked
//! in CI. Not an API: hidden from the documentation, used by nothing else.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
    pin::pin,
    sync::OnceLock,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use helo_filter_common::{CaptureEvent, FAMILY_IPV4, FAMILY_IPV6, FlowKey, MAX_CAPTURE_BYTES};

use crate::{
    config::{ConfigError, Loaded},
    operator::{
        api::{Request, Response},
        control::{PROTOCOL_VERSION, parse_request},
    },
    pipeline::{
        reassembly::{Limits, Reassembler},
        session::{NoHeloCause, Opening, Session},
        smtp::{Verb, escape_for_log, parse_command, strip_line_end},
    },
    policy::{
        CheckMode, DenyList, DenyPattern, HeloInput, Identity, Note, PolicyEngine, PolicySettings,
        Verdict,
        rfc5321::{self, LiteralForm, MAX_LABEL_LEN, MAX_NAME_LEN, Parsed},
    },
    postfix::protocol::{Received, read_request},
};

/// A parser's entry point: runs it on the bytes, panics on a broken invariant.
pub type EntryPoint = fn(&[u8]);

/// Every target: its name (the cargo-fuzz target's and its corpus directory's) and entry point.
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("smtp_command_line", smtp_command_line),
    ("reassembly", reassembly),
    ("helo_argument", helo_argument),
    ("offline_engine", offline_engine),
    ("postfix_request", postfix_request),
    ("control_request", control_request),
    ("config", config),
];

/// The SMTP command-line reader of the data path (`pipeline/smtp.rs`): line end, verb,
/// argument, and the escaping of the line for logs.
pub fn smtp_command_line(data: &[u8]) {
    let line = strip_line_end(data);
    let command = parse_command(line);
    assert_eq!(command.argument, command.argument.trim_ascii());
    let line_range = line.as_ptr_range();
    assert!(
        command.argument.is_empty()
            || line_range.contains(&command.argument.as_ptr())
                && command.argument.as_ptr_range().end <= line_range.end,
        "the argument is a part of the line"
    );
    // The verb is the first word's alone, and every recognised verb is four letters.
    let first_word = line
        .split(|b| *b == b' ' || *b == b'\t')
        .next()
        .unwrap_or(line);
    assert_eq!(parse_command(first_word).verb, command.verb);
    if command.verb != Verb::Other {
        assert_eq!(first_word.len(), 4);
    }
    assert_log_safe(&escape_for_log(data), data.len());
}

/// Flows the reassembly target's events belong to: two IPv4 and two IPv6 4-tuples, each
/// with two streams (a reused 4-tuple), one of which wraps the sequence space.
const STREAM_STARTS: [u32; 2] = [1_000, u32::MAX - 7];

fn fuzz_flow_key(index: u8) -> FlowKey {
    let mut key = FlowKey {
        sport: 40_000 + u16::from(index),
        dport: 25,
        ..FlowKey::default()
    };
    if index < 2 {
        key.family = FAMILY_IPV4;
        key.saddr[..4].copy_from_slice(&[203, 0, 113, 10 + index]);
        key.daddr[..4].copy_from_slice(&[198, 51, 100, 25]);
    } else {
        key.family = FAMILY_IPV6;
        key.saddr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + u16::from(index)).octets();
        key.daddr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25).octets();
    }
    key
}

/// Reads the fuzz input front to back; past its end every read gives nothing.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
}

/// The reassembler (`pipeline/reassembly.rs`) fed an arbitrary sequence of capture events:
/// the first byte sets the flow limit (1 to 8), then each event is a selector byte (bits 0–1
/// the 4-tuple, bit 2 the stream, bits 3–7 seconds that pass before it, expiring flows), two
/// bytes of flags (every flag combination), a signed 16-bit stream offset (overlaps, gaps,
/// offsets before the stream start and past the capture cap), a 16-bit length (beyond the
/// copy buffer too) and that many payload bytes, as far as the input goes.
pub fn reassembly(data: &[u8]) {
    let mut input = Bytes(data);
    let Some(limit) = input.u8() else { return };
    let max_flows = 1 + usize::from(limit % 8);
    let limits = Limits {
        max_flows,
        flow_timeout: Duration::from_secs(60),
    };
    let mut reassembler = Reassembler::new(limits);
    let mut now = Instant::now();
    let mut decided = HashSet::new();
    while let (Some(selector), Some(event_flags), Some(offset), Some(len)) =
        (input.u8(), input.u16(), input.u16(), input.u16())
    {
        let key = fuzz_flow_key(selector & 0b11);
        let stream_start_seq = STREAM_STARTS[usize::from(selector >> 2 & 1)];
        let elapsed = u64::from(selector >> 3);
        if elapsed > 0 {
            now += Duration::from_secs(elapsed);
            let before = reassembler.flows_in_progress();
            let expired = reassembler.expire(now);
            assert_eq!(reassembler.flows_in_progress(), before - expired);
        }
        let payload = input.take(usize::from(len).min(MAX_CAPTURE_BYTES));
        let mut event = CaptureEvent {
            key,
            ifindex: 7,
            flags: u32::from(event_flags),
            timestamp_ns: 42,
            seq: stream_start_seq.wrapping_add(offset as i16 as i32 as u32),
            stream_start_seq,
            len,
            wire_len: len,
            ack: 0,
            data: [0; MAX_CAPTURE_BYTES],
        };
        event.data[..payload.len()].copy_from_slice(payload);
        let (session, _evicted) = reassembler.push(&event, now);
        assert!(reassembler.flows_in_progress() <= max_flows);
        if let Some(session) = session {
            check_session(&session, &event);
            let id = (key, stream_start_seq);
            // The reassembler remembers the last `max_flows` decided flows and ignores their
            // late segments: while it has forgotten none, no flow is decided twice.
            if decided.len() <= max_flows {
                assert!(!decided.contains(&id), "a flow decided twice");
            }
            decided.insert(id);
        }
    }
    reassembler.expire(now + Duration::from_secs(61));
    assert_eq!(reassembler.flows_in_progress(), 0);
}

fn check_session(session: &Session, event: &CaptureEvent) {
    assert_eq!(session.flow, event.key);
    assert_eq!(session.stream_start_seq, event.stream_start_seq);
    let decisive_offset = session
        .after_decisive_seq
        .wrapping_sub(session.stream_start_seq);
    assert!(decisive_offset as usize <= MAX_CAPTURE_BYTES);
    assert_eq!(session.client.is_ipv4(), event.key.family == FAMILY_IPV4);
    assert_eq!(session.server.port(), event.key.dport);
    match &session.opening {
        Opening::Helo(helo) => {
            assert!(matches!(helo.verb, Verb::Helo | Verb::Ehlo));
            assert!(!helo.argument.contains(&b'\n'), "a HELO argument with a LF");
            assert_eq!(helo.argument, helo.argument.trim_ascii());
            assert!(decisive_offset > 0, "a HELO line of no bytes");
            assert_log_safe(&helo.escaped_line, helo.argument.len());
        }
        Opening::NoHelo(NoHeloCause::OtherCommandFirst { escaped_line }) => {
            assert_log_safe(escaped_line, 0);
        }
        Opening::NoHelo(NoHeloCause::CapExceeded) => {}
    }
}

/// An escaped text for a log line: printable ASCII only (no CR, LF or escape sequence), and
/// at least as long as the `raw_len` bytes it renders.
fn assert_log_safe(escaped: &str, raw_len: usize) {
    assert!(
        escaped.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "unescaped bytes in a log text: {escaped:?}"
    );
    assert!(escaped.len() >= raw_len);
}

/// The HELO argument parser (`policy/rfc5321.rs`): what it accepts is well-formed and
/// parses again to itself; blanks and a line end around the argument change nothing.
pub fn helo_argument(data: &[u8]) {
    let parsed = rfc5321::parse(data);
    let padded = [b" \t", data, b" \r\n"].concat();
    assert_eq!(
        rfc5321::parse(&padded),
        parsed,
        "blanks around the argument matter"
    );
    match &parsed {
        Parsed::Domain(domain) => {
            let name = domain.as_str();
            assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
            assert!(!name.ends_with('.'));
            assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
            assert!(
                domain
                    .labels()
                    .all(|label| (1..=MAX_LABEL_LEN).contains(&label.len()))
            );
            assert_eq!(rfc5321::parse(name.as_bytes()), parsed);
            assert_eq!(
                rfc5321::parse(&data.to_ascii_uppercase()),
                parsed,
                "a name's case matters"
            );
        }
        Parsed::Literal(literal) => {
            let text = match literal.form {
                LiteralForm::V6Tagged => format!("[IPv6:{}]", literal.ip),
                LiteralForm::V4 | LiteralForm::V6Untagged => format!("[{}]", literal.ip),
            };
            assert_eq!(rfc5321::parse(text.as_bytes()), parsed);
        }
        Parsed::BareIp { text, ip } => {
            assert_eq!(rfc5321::parse(text.as_bytes()), parsed);
            if let Some(ip) = ip {
                assert!(
                    matches!(rfc5321::parse(ip.to_string().as_bytes()), Parsed::BareIp { ip: Some(same), .. } if same == *ip)
                );
            }
        }
        Parsed::Invalid(error) => assert!(!error.to_string().is_empty()),
    }
}

/// Clients the offline engine target picks from: loopback (trusted), public, private, our
/// own address (also IPv4-mapped), and IPv6.
const ENGINE_CLIENTS: [&str; 8] = [
    "203.0.113.10",
    "127.0.0.1",
    "198.51.100.25",
    "::ffff:198.51.100.25",
    "192.168.1.1",
    "2001:db8:1::10",
    "::1",
    "10.0.0.1",
];

/// Two engines: the spec's identity and operator deny patterns, without and with a score
/// threshold (built once: a deny regex compiles slowly).
fn fuzz_engines() -> &'static [PolicyEngine; 2] {
    static ENGINES: OnceLock<[PolicyEngine; 2]> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let settings = |score_threshold| PolicySettings {
            identity: Identity {
                names: vec!["mx.example.org".into()],
                domains: vec!["example.org".into()],
                addrs: vec![
                    "198.51.100.25".parse().expect("an address"),
                    "2001:db8:25::25".parse().expect("an address"),
                ],
            },
            deny: DenyList::new(
                ["bad.example.net", "*.spam.example", "/dyn-[0-9]+\\..*/"]
                    .into_iter()
                    .map(|p| DenyPattern::parse(p).expect("a deny pattern"))
                    .collect(),
            ),
            score_threshold,
            ..PolicySettings::default()
        };
        [
            PolicyEngine::new(settings(None), None),
            PolicyEngine::new(settings(Some(2)), None),
        ]
    })
}

/// The whole offline engine (`PolicyEngine::evaluate_offline`): the first byte chooses the
/// engine (bit 0), the data path's findings (bit 1 pipelining, bit 2 no HELO, bit 3 no
/// argument at all) and the client (bits 4–6); the rest is the HELO argument. The verdict
/// is consistent (a reject names its primary reason, the score is the sum of the weights)
/// and a name's case and trailing dot do not change it.
pub fn offline_engine(data: &[u8]) {
    let Some((&choice, helo)) = data.split_first() else {
        return;
    };
    let engine = &fuzz_engines()[usize::from(choice & 1)];
    let client: IpAddr = ENGINE_CLIENTS[usize::from(choice >> 4 & 0b111)]
        .parse()
        .expect("an address");
    let input = HeloInput {
        helo: (choice & 0b1000 == 0).then(|| helo.to_vec()),
        client,
        pipelined: choice & 0b10 != 0,
        no_helo: choice & 0b100 != 0,
        reverse_name: None,
    };
    let verdict = engine.evaluate_offline(&input);
    if engine.is_trusted(client) {
        assert_eq!(verdict, Verdict::unjudged(Note::Trusted));
        return;
    }
    check_verdict(engine, &verdict);
    if let Some(Parsed::Domain(_)) = input.helo.as_deref().map(rfc5321::parse) {
        let body = helo
            .trim_ascii()
            .strip_suffix(b".")
            .unwrap_or(helo.trim_ascii());
        for variant in [body.to_ascii_uppercase(), [body, b"."].concat()] {
            let other = engine.evaluate_offline(&HeloInput {
                helo: Some(variant),
                ..input.clone()
            });
            assert_eq!(other.decision, verdict.decision, "a variant of the name");
            assert!(other.reason_codes().eq(verdict.reason_codes()));
        }
    }
}

fn check_verdict(engine: &PolicyEngine, verdict: &Verdict) {
    let table = &engine.settings().table;
    assert!(verdict.has_note(Note::Offline));
    assert_eq!(verdict.is_reject(), verdict.primary().is_some());
    if let Some(primary) = verdict.primary() {
        assert!(
            table.mode(primary) == CheckMode::Reject || verdict.has_note(Note::ScoreThreshold),
            "a reject by a soft reason without the score threshold"
        );
    }
    let codes: Vec<_> = verdict.reason_codes().collect();
    if let Some((first, rest)) = codes.split_first() {
        assert!(
            rest.windows(2).all(|pair| pair[0] < pair[1]) && !rest.contains(first),
            "reasons out of order or given twice: {codes:?}"
        );
    }
    assert_eq!(
        verdict.score,
        codes.iter().map(|&r| table.score_of(r)).sum::<u32>()
    );
    assert!(verdict.reasons.iter().all(|f| !f.explanation.is_empty()));
}

/// The Postfix policy request reader (`postfix/protocol.rs`), through a read buffer of 1 to
/// 64 bytes (the first byte) so that lines cross its refills: whatever came before, two
/// empty lines put the reader back in step, and the next request is read whole.
pub fn postfix_request(data: &[u8]) {
    let Some((&capacity, garbage)) = data.split_first() else {
        return;
    };
    let probe: &[u8] = b"\n\nrequest=smtpd_access_policy\nhelo_name=probe.example\n\n";
    let stream = [garbage, probe].concat();
    let mut reader =
        tokio::io::BufReader::with_capacity(1 + usize::from(capacity % 64), stream.as_slice());
    let newlines = stream.iter().filter(|&&b| b == b'\n').count();
    let mut last = None;
    for _ in 0..=newlines {
        let received = ready(read_request(&mut reader)).expect("reading from memory");
        match received {
            Received::Closed => {
                let Some(Received::Request(request)) = last else {
                    panic!("the probe request was not read: the reader is out of step");
                };
                assert_eq!(request.get("helo_name"), Some(&b"probe.example"[..]));
                assert_eq!(request.text("request"), Some("smtpd_access_policy"));
                return;
            }
            Received::Malformed(ref why) => assert!(!why.is_empty()),
            Received::Request(ref request) => {
                assert!(request.get("helo_name").is_none_or(|h| !h.contains(&b'\n')));
            }
        }
        last = Some(received);
    }
    panic!("more requests than lines");
}

/// Runs a future that never waits (it reads from memory) to its end.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read from memory waited"),
    }
}

/// The control protocol's request parser (`operator/control.rs`): an accepted request, written
/// again as the CLI writes it, parses to the same command; a refused one gets a one-line
/// error response.
pub fn control_request(data: &[u8]) {
    match parse_request(data) {
        Ok(command) => {
            let line = serde_json::to_string(&Request {
                version: PROTOCOL_VERSION,
                command: &command,
            })
            .expect("a command serialises");
            assert_eq!(parse_request(line.as_bytes()), Ok(command));
        }
        Err(error) => {
            assert!(!error.message.is_empty());
            let response = serde_json::to_string(&Response::<serde_json::Value>::error(error))
                .expect("a response serialises");
            assert!(!response.contains('\n'));
        }
    }
}

/// The configuration loader (`Loaded::parse`, then `validate`): an error points inside the
/// text; a configuration that validates validates again, and every setting derived from it
/// is built without a panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let lines = text.lines().count();
    let validated = Loaded::parse(text, "fuzz.toml".to_owned()).and_then(Loaded::validate);
    match validated {
        Ok(file) => {
            let mut again = Loaded::defaults();
            again.config = file.clone();
            assert_eq!(
                again.validate().expect("a valid file validates again"),
                file
            );
            let _ = (file.kernel_config(), file.dns_settings(), file.replies());
            let engine = PolicyEngine::new(file.settings(), None);
            let verdict = engine.evaluate_offline(&HeloInput::new(
                "mail.example.net",
                [203, 0, 113, 10].into(),
            ));
            assert!(verdict.has_note(Note::Offline) || verdict.has_note(Note::Trusted));
        }
        Err(ConfigError::Invalid { line, .. }) => {
            assert!(line <= lines + 1, "an error on line {line} of {lines}");
        }
        Err(error) => panic!("neither valid nor invalid: {error}"),
    }
}
