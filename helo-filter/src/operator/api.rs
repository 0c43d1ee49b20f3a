//! The control API, typed: what the operator asks (`Command`), what each command answers
//! (one result struct per command), and why a request failed (`ControlError`, with a
//! machine-readable `ErrorKind`). The daemon builds these and the CLI reads them back; on the
//! wire they are the JSON lines of protocol version 1, whose schemas are in
//! `docs/operations.md`:
//!
//! ```text
//! {"version":1,"command":"deny_add","net":"198.51.100.7/32","ttl_secs":3600}
//! {"version":1,"ok":true,"result":{...}}
//! {"version":1,"ok":false,"error":"198.51.100.7/32 is not in the deny list","kind":"not_found"}
//! ```
//!
//! A field added to a result or a new error kind keeps version 1; renaming or removing a
//! field, or changing its type, is a new version.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What the operator asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Answered by an [`Entry`].
    AllowAdd {
        net: IpNet,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        comment: Option<String>,
    },
    /// Answered by [`Removed`].
    AllowDel { net: IpNet },
    /// Answered by an [`AllowList`].
    AllowList,
    /// Answered by an [`Entry`].
    DenyAdd {
        net: IpNet,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        comment: Option<String>,
        /// Shared with the fleet (docs/fleet.md).
        #[serde(default)]
        fleet: bool,
    },
    /// Answered by a [`HeloEntry`].
    DenyHeloAdd {
        pattern: String,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        comment: Option<String>,
    },
    /// Answered by [`Removed`].
    DenyDel {
        net: IpNet,
        /// Lifted on every member of the fleet.
        #[serde(default)]
        fleet: bool,
    },
    /// Answered by [`Removed`].
    DenyHeloDel { pattern: String },
    /// Answered by a [`DenyList`].
    DenyList,
    /// Answered by a [`ReputationList`].
    ReputationList {
        #[serde(default)]
        top: Option<usize>,
    },
    /// Answered by a [`SourceScore`].
    ReputationShow { ip: IpAddr },
    /// Answered by a [`ReputationReset`].
    ReputationReset { ip: IpAddr },
    /// Answered by a [`Status`].
    Status,
    /// Answered by [`Flows`].
    Flows {
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Answered by an [`Explanation`].
    Explain { ip: IpAddr },
    /// Answered by [`Reloaded`].
    Reload,
    /// Answered by [`Detached`].
    Detach,
}

/// One request: the version and the command's fields, flat.
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub version: u32,
    #[serde(flatten)]
    pub command: &'a Command,
}

/// One response: `result` when `ok`, else `error` (a sentence) and `kind`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response<T = serde_json::Value> {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Absent from daemons older than the typed API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

impl<T> Response<T> {
    pub fn ok(result: T) -> Response<T> {
        Response {
            version: super::control::PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
            kind: None,
        }
    }

    pub fn error(error: ControlError) -> Response<T> {
        Response {
            version: super::control::PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(error.message),
            kind: Some(error.kind),
        }
    }
}

/// Why a request failed, for a program (the message is for a person).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is not JSON, not an object, has no version, names no known command,
    /// has a field of the wrong type, or is longer than 64 KiB.
    BadRequest,
    /// The request's protocol version is not this daemon's.
    UnsupportedVersion,
    /// A value the command cannot take: `ttl_secs` 0, a comment too long or with control
    /// characters, a HELO pattern that does not parse.
    InvalidArgument,
    /// The entry to delete is not in the operator's list.
    NotFound,
    /// The entry belongs to the configuration file: edit the file and reload.
    ConfigEntry,
    /// The entry came from the fleet: `deny del --fleet` lifts it on every member.
    FleetEntry,
    /// `reload`: the file does not load or validate (or its DNS settings cannot be set
    /// up); the running configuration is kept.
    InvalidConfig,
    /// A kernel map could not be changed.
    Kernel,
    /// The state directory or the pins could not be written or removed.
    Io,
    /// The daemon already serves its most control connections at once (64): try again.
    Busy,
    /// (CLI) no daemon answers on the control socket.
    Unavailable,
    /// (CLI) the control socket is root's.
    PermissionDenied,
    /// (CLI) the daemon closed the connection or answered something unreadable.
    BadResponse,
    /// The daemon could not encode its answer (a bug).
    Internal,
    /// A kind this client does not know (from a newer daemon).
    #[serde(other)]
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ConfigEntry => "config_entry",
            ErrorKind::FleetEntry => "fleet_entry",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::Kernel => "kernel",
            ErrorKind::Io => "io",
            ErrorKind::Busy => "busy",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Internal => "internal",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError {
            kind,
            message: message.into(),
        }
    }

    /// A kernel map update that failed (the error's whole chain).
    pub fn kernel(error: &anyhow::Error) -> ControlError {
        ControlError::new(ErrorKind::Kernel, format!("{error:#}"))
    }

    /// A state or pin file that could not be written or removed.
    pub fn io(error: &anyhow::Error) -> ControlError {
        ControlError::new(ErrorKind::Io, format!("{error:#}"))
    }

    /// The same error, its message after `prefix`.
    pub fn context(self, prefix: &str) -> ControlError {
        ControlError {
            kind: self.kind,
            message: format!("{prefix}: {}", self.message),
        }
    }

    /// What `--json` prints for it: `{"ok":false,"kind":K,"error":TEXT}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            ok: bool,
            kind: ErrorKind,
            error: &'a str,
        }
        serde_json::to_string(&Line {
            ok: false,
            kind: self.kind,
            error: &self.message,
        })
        .unwrap_or_default()
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ControlError {}

/// Who put an entry in a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntrySource {
    /// The configuration file (or the command line): deleted by editing it and reloading.
    Config,
    /// The operator, over the control socket.
    Operator,
    /// Reputation (deny list only).
    Reputation,
    /// Another member of the fleet (deny list only).
    Fleet,
}

impl EntrySource {
    pub fn as_str(self) -> &'static str {
        match self {
            EntrySource::Config => "config",
            EntrySource::Operator => "operator",
            EntrySource::Reputation => "reputation",
            EntrySource::Fleet => "fleet",
        }
    }
}

/// An allow or deny list entry (`allow add`, `deny add`, and the lists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub net: IpNet,
    pub source: EntrySource,
    /// Unix time it ends at; none: it stays until deleted.
    pub expires_at: Option<u64>,
    pub expires_in_secs: Option<u64>,
    pub comment: Option<String>,
    /// Unix time it was added (operator entries).
    pub added_at: Option<u64>,
    /// The fleet member that made a fleet entry, or that this member shares an operator
    /// entry with (`deny add --fleet`: this one's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// A HELO deny pattern (`deny add --helo`, and the deny list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeloEntry {
    pub pattern: String,
    pub source: EntrySource,
    pub expires_at: Option<u64>,
    pub comment: Option<String>,
    pub added_at: Option<u64>,
}

/// `allow del`, `deny del`: the CIDR or the pattern removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

/// `allow list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllowList {
    pub entries: Vec<Entry>,
}

/// `deny list`: sources, then HELO patterns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenyList {
    pub entries: Vec<Entry>,
    pub helo: Vec<HeloEntry>,
}

/// One source's reputation (`reputation show`, and each row of `reputation list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceScore {
    /// The IPv4 /32 or IPv6 /64.
    pub source: IpNet,
    pub score: f64,
    pub denied_for_secs: Option<u64>,
}

/// `reputation list`: highest score first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReputationList {
    pub sources: Vec<SourceScore>,
}

/// `reputation reset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReputationReset {
    pub source: IpNet,
    /// It had a score or a denial.
    pub was_known: bool,
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `native` or `generic`.
    pub mode: String,
    /// The link was pinned by an earlier daemon and taken over.
    pub adopted: bool,
}

/// Entries in force in each list (the file's and the operator's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListSizes {
    pub allow: usize,
    pub deny: usize,
    pub deny_helo: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReputationSizes {
    /// Sources with a score.
    pub sources: usize,
    /// Sources denied by reputation.
    pub denied: usize,
}

/// The last `reload` that was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusedReload {
    /// Unix time of the refusal.
    pub at: u64,
    /// Why (the file's error, with file:line when known).
    pub error: String,
}

/// Which configuration is in force (`status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigState {
    /// The configuration file; none: defaults and flags only.
    pub file: Option<String>,
    /// Unix time the configuration in force was read (the start, or the last reload that
    /// was applied).
    pub loaded_at: u64,
    /// Sections the last applied reload changed (`policy`, `dns`, `lists` are the ones a
    /// reload applies); empty before any reload.
    pub applied: Vec<String>,
    /// Sections whose values in the file in force differ from the enforced ones (those
    /// read at the start): they take effect at the next restart.
    pub pending_restart: Vec<String>,
    /// The last reload, if it was refused: the configuration above stays in force.
    pub refused: Option<RefusedReload>,
}

/// `status`. `deployment`, `action` and `monitor` are the enforced values (read at the
/// start: `[enforce]` does not reload); `bundle` and the lists follow reloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    pub uptime_secs: u64,
    pub interfaces: Vec<Interface>,
    pub deployment: String,
    pub action: String,
    pub monitor: bool,
    pub bundle: String,
    /// The kernel's counters by name.
    pub counters: BTreeMap<String, u64>,
    pub lists: ListSizes,
    pub reputation: ReputationSizes,
    /// The configuration file, if any (as `configuration.file`).
    pub config: Option<String>,
    pub state_dir: String,
    pub bpffs_dir: String,
    pub configuration: ConfigState,
    /// The fleet, when this member is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStatus>,
}

/// One judged session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Unix time of the verdict.
    pub at: u64,
    pub client: String,
    pub server: String,
    /// `HELO`, `EHLO`, or `none`.
    pub verb: String,
    /// The command line, escaped.
    pub line: String,
    pub verdict: String,
    pub reasons: Vec<String>,
    pub score: u32,
    pub action: String,
}

/// `flows`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flows {
    pub flows: Vec<Flow>,
}

/// What a new connection from an address meets now (`explain`), in the kernel's order:
/// an allow entry wins over a deny entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// An allow entry covers it: no capture, no gate, trusted by the policy.
    Allowed,
    /// A deny entry (the file's, the operator's or reputation's) covers it: its SYNs to the
    /// SMTP ports are dropped (or answered with a RST).
    Denied,
    /// Its HELO is judged, as any source's.
    Judged,
}

/// `explain`: why an address is treated as it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub address: IpAddr,
    pub standing: Standing,
    /// The daemon enforces nothing: reputation denials are counted, not put into the
    /// kernel (so a source it would deny is still judged).
    pub monitor: bool,
    /// Allow entries that cover the address.
    pub allow: Vec<Entry>,
    /// Deny entries that cover it (sources; HELO patterns are not about addresses).
    pub deny: Vec<Entry>,
    /// The reputation of its source (IPv4 /32, IPv6 /64).
    pub reputation: SourceScore,
    /// Its latest sessions, newest first (at most 8).
    pub sessions: Vec<Flow>,
}

/// `reload` (applied).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The file read; none: defaults and flags only.
    pub reloaded: Option<String>,
    /// Sections it changed and that are now applied.
    #[serde(default)]
    pub applied: Vec<String>,
    /// Sections that differ from the enforced ones and wait for a restart.
    #[serde(default)]
    pub pending_restart: Vec<String>,
}

/// `detach`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detached {
    pub detached: bool,
    pub bpffs_dir: String,
    /// Present (false) when the CLI removed the pins itself, with no daemon running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_keeps_error_a_string_and_adds_kind() {
        let response: Response = Response::error(ControlError::new(
            ErrorKind::NotFound,
            "203.0.113.14/32 is not in the deny list",
        ));
        assert_eq!(
            serde_json::to_string(&response).expect("json"),
            r#"{"version":1,"ok":false,"error":"203.0.113.14/32 is not in the deny list","kind":"not_found"}"#
        );
        let read: Response = serde_json::from_str(r#"{"version":1,"ok":false,"error":"x"}"#)
            .expect("an answer without kind");
        assert_eq!(read.kind, None);
        let read: Response = serde_json::from_str(
            r#"{"version":1,"ok":false,"error":"x","kind":"from_the_future"}"#,
        )
        .expect("an unknown kind");
        assert_eq!(read.kind, Some(ErrorKind::Other));
        for kind in [
            ErrorKind::BadRequest,
            ErrorKind::InvalidConfig,
            ErrorKind::Io,
        ] {
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
    }

    #[test]
    fn the_json_error_line() {
        let e = ControlError::new(ErrorKind::Unavailable, "no control socket at /x");
        assert_eq!(
            e.to_json(),
            r#"{"ok":false,"kind":"unavailable","error":"no control socket at /x"}"#
        );
    }

    #[test]
    fn results_keep_their_field_names() {
        let entry = Entry {
            net: "192.0.2.0/24".parse().expect("net"),
            source: EntrySource::Config,
            expires_at: None,
            expires_in_secs: None,
            comment: None,
            added_at: None,
            member: None,
        };
        assert_eq!(
            serde_json::to_string(&entry).expect("json"),
            r#"{"net":"192.0.2.0/24","source":"config","expires_at":null,"expires_in_secs":null,"comment":null,"added_at":null}"#
        );
        let reset = ReputationReset {
            source: "2001:db8:1::/64".parse().expect("net"),
            was_known: true,
        };
        assert_eq!(
            serde_json::to_string(&reset).expect("json"),
            r#"{"source":"2001:db8:1::/64","was_known":true}"#
        );
    }
}
