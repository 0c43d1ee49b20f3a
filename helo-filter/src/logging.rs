//! Log output, to stderr through tracing (the `log` records of the daemon's modules
//! included): `human` text, or (`--log-format json`) one JSON object per line. A verdict's
//! line is written for its format: `key=value` text for a person, separate JSON keys
//! (client, server, verb, line, verdict, reasons, score, action, …) for a log pipeline, so
//! that nothing has to be parsed back out of a message string. HELO text is escaped where
//! it is logged.

use std::{fmt::Display, sync::OnceLock};

use crate::policy::Verdict;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `key=value` text lines.
    Human,
    /// One JSON object per line, a verdict's facts as keys of their own.
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the subscriber; RUST_LOG sets the level (default info).
pub fn init(format: LogFormat) {
    use std::io::IsTerminal as _;
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Flattened: a verdict's keys sit beside `message`, not inside `fields`.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("helo-filter: cannot set up logging: {e}");
    }
}

/// Whether log lines are JSON objects (verdicts then go out as separate keys).
pub fn json() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// Who a verdict was about, for its JSON log line.
pub struct Judged<'a> {
    /// `helo`, `no_helo` (the data path's sessions) or `policy` (a Postfix request).
    pub kind: &'static str,
    pub client: &'a dyn Display,
    pub server: Option<&'a dyn Display>,
    /// `HELO` or `EHLO`.
    pub verb: Option<&'a str>,
    /// Commands followed the HELO before the server's greeting reply.
    pub pipelined: Option<bool>,
    /// Why a session has no HELO.
    pub cause: Option<&'a str>,
    /// The client's line, escaped.
    pub line: &'a str,
    /// Postfix's session id (the policy service).
    pub instance: Option<&'a str>,
}

/// A verdict's JSON log line: each fact its own key.
pub fn verdict_json(judged: &Judged, verdict: &Verdict, action: &str, destroyed: Option<bool>) {
    let reasons: Vec<&str> = verdict.reason_codes().map(|r| r.as_str()).collect();
    let notes: Vec<&str> = verdict.notes.iter().map(|n| n.as_str()).collect();
    tracing::info!(
        kind = judged.kind,
        client = %judged.client,
        server = judged.server.map(tracing::field::display),
        verb = judged.verb,
        pipelined = judged.pipelined,
        cause = judged.cause,
        line = judged.line,
        instance = judged.instance,
        verdict = verdict.decision.as_str(),
        reasons = reasons.join(","),
        score = verdict.score,
        notes = notes.join(","),
        dns_error = verdict.dns_error.as_ref().map(tracing::field::display),
        destroyed,
        action,
        "verdict"
    );
}
