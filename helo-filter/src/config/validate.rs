//! The one validation of a configuration (file plus flags), shared by `run`, `reload` and
//! `config check`: types and single values are checked while the file is parsed; this adds
//! the ranges and the rules across keys, each error located at its file:line and key, or at
//! the flag that set it. What only a running daemon can know (interfaces that exist,
//! directories it can write, DNS servers that answer) stays `run`'s to report.

use std::{collections::HashSet, hash::Hash, path::Path};

use helo_filter_common::{MAX_SMTP_PORTS, maps};

use super::{ConfigError, PolicyFile, ReasonKey, locate::key_position};
use crate::policy::Reason;

/// The daemon tells the kernel it is alive this often; the kernel's heartbeat timeout must
/// leave room for two beats.
pub const HEARTBEAT_INTERVAL_MS: u32 = 500;
/// The longest `gate_deadline_ms`: Postfix's own `smtpd_timeout`, past which a client's held
/// command would be dropped by the MTA anyway.
pub const MAX_GATE_DEADLINE_MS: u32 = 300_000;
/// The known-good cache counts at most this many accepted sessions before trusting.
const MAX_KNOWN_GOOD_AFTER: u32 = 1_000;
/// A known-good standing lasts from a minute to 30 days.
const MIN_KNOWN_GOOD_TTL_SECS: u64 = 60;
const MAX_KNOWN_GOOD_TTL_SECS: u64 = 30 * 86_400;
/// A Unix socket path must fit `sun_path` (108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// A Linux interface name has at most 15 bytes (IFNAMSIZ with its NUL).
const MAX_INTERFACE_NAME: usize = 15;
/// A BPF ring buffer is a power of two of at least a page (4 KiB on the platforms the
/// filter runs on); past 1 GiB it is memory no HELO rate needs.
const MIN_RINGBUF_BYTES: u32 = 4096;
const MAX_RINGBUF_BYTES: u32 = 1 << 30;
/// Reply texts go into one SMTP reply line (at most 512 bytes with the code and the
/// reason appended): 200 bytes leave room for both.
pub const MAX_REPLY_TEXT: usize = 200;

/// A configuration as read, before validation: the values, the text they came from, and the
/// flags that overrode them.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: PolicyFile,
    /// The file's name and text (none: the built-in defaults).
    source: Option<(String, String)>,
    pub flags: FlagOrigins,
}

/// Which keys a command-line flag set: `(dotted key, flag)`.
#[derive(Clone, Debug, Default)]
pub struct FlagOrigins(Vec<(&'static str, &'static str)>);

impl FlagOrigins {
    /// Sets `slot` to the flag's value, if the flag was given.
    pub fn set<T>(
        &mut self,
        key: &'static str,
        flag: &'static str,
        value: Option<T>,
        slot: &mut T,
    ) {
        if let Some(value) = value {
            *slot = value;
            self.0.push((key, flag));
        }
    }

    /// Adds a repeatable flag's values to the file's list.
    pub fn extend<T: Clone>(
        &mut self,
        key: &'static str,
        flag: &'static str,
        values: &[T],
        list: &mut Vec<T>,
    ) {
        if !values.is_empty() {
            list.extend_from_slice(values);
            self.0.push((key, flag));
        }
    }

    fn flag_of(&self, key: &str) -> Option<&'static str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| *f)
    }
}

/// One thing wrong, before it is located.
struct Problem {
    key: String,
    message: String,
}

impl Loaded {
    /// Reads and parses a file (unknown keys and ill-typed values are refused here).
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: name.clone(),
            source,
        })?;
        Loaded::parse(text, name)
    }

    /// Parses text; `name` names it in errors.
    pub fn parse(text: String, name: String) -> Result<Loaded, ConfigError> {
        let config = PolicyFile::parse(&text, &name)?;
        Ok(Loaded {
            config,
            source: Some((name, text)),
            flags: FlagOrigins::default(),
        })
    }

    /// No file: the built-in defaults.
    pub fn defaults() -> Loaded {
        Loaded {
            config: PolicyFile::default(),
            source: None,
            flags: FlagOrigins::default(),
        }
    }

    /// Checks every range and cross-key rule; the first problem found is the error.
    pub fn validate(self) -> Result<PolicyFile, ConfigError> {
        match problems(&self.config).into_iter().next() {
            None => Ok(self.config),
            Some(problem) => Err(self.locate(problem)),
        }
    }

    fn locate(&self, problem: Problem) -> ConfigError {
        if let Some(flag) = self.flags.flag_of(&problem.key) {
            return ConfigError::Flag {
                flag: flag.to_owned(),
                message: problem.message,
            };
        }
        let (file, position) = match &self.source {
            Some((name, text)) => (name.clone(), key_position(text, &problem.key)),
            None => ("(built-in defaults)".to_owned(), None),
        };
        let (line, column) = position.unwrap_or((0, 0));
        ConfigError::Invalid {
            file,
            line,
            column,
            key: problem.key,
            message: problem.message,
        }
    }
}

/// Every rule, in the order of the sections in the example file.
fn problems(c: &PolicyFile) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut refuse = |key: &str, bad: bool, message: String| {
        if bad {
            found.push(Problem {
                key: key.to_owned(),
                message,
            });
        }
    };

    let ports = &c.kernel.smtp_ports;
    refuse(
        "kernel.smtp_ports",
        ports.is_empty(),
        "at least one port: with none the filter would see no SMTP traffic".into(),
    );
    refuse(
        "kernel.smtp_ports",
        ports.len() > MAX_SMTP_PORTS,
        format!("at most {MAX_SMTP_PORTS} ports ({} given)", ports.len()),
    );
    refuse(
        "kernel.smtp_ports",
        ports.contains(&0),
        "0 is not a port".into(),
    );
    refuse(
        "kernel.smtp_ports",
        has_duplicates(ports),
        "a port is given twice".into(),
    );
    let interfaces = &c.kernel.interfaces;
    if let Some(bad) = interfaces.iter().find(|i| !valid_interface_name(i)) {
        refuse(
            "kernel.interfaces",
            true,
            format!(
                "{bad:?} is not an interface name (1 to {MAX_INTERFACE_NAME} bytes, no '/', \
                 ':' or white space)"
            ),
        );
    }
    refuse(
        "kernel.interfaces",
        has_duplicates(interfaces),
        "an interface is given twice".into(),
    );
    let ringbuf = c.kernel.ringbuf_bytes;
    refuse(
        "kernel.ringbuf_bytes",
        !ringbuf.is_power_of_two() || !(MIN_RINGBUF_BYTES..=MAX_RINGBUF_BYTES).contains(&ringbuf),
        format!(
            "a power of two from {MIN_RINGBUF_BYTES} (a page) to {MAX_RINGBUF_BYTES} bytes, \
             {ringbuf} given"
        ),
    );

    let enforce = &c.enforce;
    refuse(
        "enforce.heartbeat_timeout_ms",
        enforce.heartbeat_timeout_ms < 2 * HEARTBEAT_INTERVAL_MS,
        format!(
            "at least {} ms (twice the {HEARTBEAT_INTERVAL_MS} ms heartbeat), {} given",
            2 * HEARTBEAT_INTERVAL_MS,
            enforce.heartbeat_timeout_ms
        ),
    );
    refuse(
        "enforce.known_good_after",
        enforce.known_good_after > MAX_KNOWN_GOOD_AFTER,
        format!(
            "at most {MAX_KNOWN_GOOD_AFTER} sessions (0: off), {} given",
            enforce.known_good_after
        ),
    );
    refuse(
        "enforce.known_good_ttl_secs",
        !(MIN_KNOWN_GOOD_TTL_SECS..=MAX_KNOWN_GOOD_TTL_SECS).contains(&enforce.known_good_ttl_secs),
        format!(
            "from {MIN_KNOWN_GOOD_TTL_SECS} s to {MAX_KNOWN_GOOD_TTL_SECS} s (30 days), {} given",
            enforce.known_good_ttl_secs
        ),
    );
    refuse(
        "enforce.gate_deadline_ms",
        !(1..=MAX_GATE_DEADLINE_MS).contains(&enforce.gate_deadline_ms),
        format!(
            "from 1 to {MAX_GATE_DEADLINE_MS} ms, {} given",
            enforce.gate_deadline_ms
        ),
    );

    let reputation = &c.reputation;
    refuse(
        "reputation.threshold",
        !(reputation.threshold.is_finite() && reputation.threshold > 0.0),
        format!("a finite number above 0, {} given", reputation.threshold),
    );
    refuse(
        "reputation.half_life_secs",
        reputation.half_life_secs == 0,
        "at least 1 second".into(),
    );
    refuse(
        "reputation.deny_ttl_secs",
        reputation.deny_ttl_secs == 0,
        "at least 1 second".into(),
    );
    refuse(
        "reputation.reject_weight",
        !valid_weight(reputation.reject_weight),
        format!(
            "a finite number, 0 or more, {} given",
            reputation.reject_weight
        ),
    );
    refuse(
        "reputation.reply_weight",
        !valid_weight(reputation.reply_weight),
        format!(
            "a finite number, 0 or more, {} given",
            reputation.reply_weight
        ),
    );
    refuse(
        "reputation.soft_score_weight",
        !valid_weight(reputation.soft_score_weight),
        format!(
            "a finite number, 0 or more, {} given",
            reputation.soft_score_weight
        ),
    );
    if let Some((reason, weight)) = reputation
        .weights
        .entries()
        .into_iter()
        .find_map(|(reason, weight)| weight.filter(|w| !valid_weight(*w)).map(|w| (reason, w)))
    {
        refuse(
            &format!("reputation.weights.{}", reason.as_str()),
            true,
            format!("a finite number, 0 or more, {weight} given"),
        );
    }
    let fleet = &c.fleet;
    let fleet_held = if fleet.redis.is_some() {
        fleet.max_denied
    } else {
        0
    };
    let deny_entries = reputation
        .max_denied
        .saturating_add(c.lists.deny.len())
        .saturating_add(fleet_held);
    refuse(
        "reputation.max_denied",
        deny_entries > maps::DENY_CAPACITY as usize,
        format!(
            "max_denied plus the [lists] deny entries plus [fleet] max_denied \
             ({deny_entries}) must fit the kernel's deny map ({} entries)",
            maps::DENY_CAPACITY
        ),
    );
    refuse(
        "fleet.max_denied",
        fleet.max_denied == 0,
        "at least 1 (a member holds the fleet's denials it enforces)".into(),
    );
    let fleet_name_ok = |name: &str| {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    refuse(
        "fleet.prefix",
        !fleet_name_ok(&fleet.prefix),
        "1 to 64 letters, digits, '-', '_' or '.' (it starts every key and channel)".into(),
    );
    refuse(
        "fleet.name",
        fleet.name.as_deref().is_some_and(|n| !fleet_name_ok(n)),
        "1 to 64 letters, digits, '-', '_' or '.'".into(),
    );
    refuse(
        "lists.allow",
        c.lists.allow.len() > maps::ALLOW_CAPACITY as usize,
        format!(
            "at most {} entries (the kernel's allow map), {} given",
            maps::ALLOW_CAPACITY,
            c.lists.allow.len()
        ),
    );

    refuse(
        "control.socket",
        !c.control.socket.is_absolute(),
        "an absolute path".into(),
    );
    refuse(
        "control.socket",
        socket_path_too_long(&c.control.socket),
        format!("a Unix socket path has at most {MAX_SOCKET_PATH} bytes"),
    );
    refuse(
        "state.dir",
        !c.state.dir.is_absolute(),
        "an absolute path".into(),
    );
    refuse(
        "state.bpffs_dir",
        !c.state.bpffs_dir.is_absolute(),
        "an absolute path".into(),
    );

    if let Some(super::ListenAddr::Unix(path)) = &c.postfix.listen {
        refuse(
            "postfix.listen",
            socket_path_too_long(path),
            format!("a Unix socket path has at most {MAX_SOCKET_PATH} bytes"),
        );
    }
    let mut texts = vec![
        (
            "postfix.reject_text".to_owned(),
            c.postfix.reject_text.as_ref(),
        ),
        (
            "postfix.defer_text".to_owned(),
            c.postfix.defer_text.as_ref(),
        ),
        ("replies.text".to_owned(), c.replies.text.as_ref()),
    ];
    for (reason, keys) in &c.replies.reasons {
        let key = format!("replies.reasons.{}.text", reason.0.as_str());
        texts.push((key, keys.text.as_ref()));
    }
    for (key, text) in texts {
        let len = text.map_or(0, |t| t.0.len());
        refuse(
            &key,
            len > MAX_REPLY_TEXT,
            format!(
                "at most {MAX_REPLY_TEXT} bytes (it goes into one SMTP reply line), {len} given"
            ),
        );
    }
    // An old name beside its new one: which one would count is not obvious.
    let r = &c.replies;
    for (old, set, new, new_set) in [
        (
            "policy.deny",
            !c.policy.deprecated_deny.is_empty(),
            "policy.deny_helo",
            !c.policy.deny_helo.is_empty(),
        ),
        (
            "postfix.reject_code",
            c.postfix.reject_code.is_some(),
            "replies.code",
            r.code.is_some(),
        ),
        (
            "postfix.reject_text",
            c.postfix.reject_text.is_some(),
            "replies.enhanced` and `replies.text",
            r.enhanced.is_some() || r.text.is_some(),
        ),
        (
            "postfix.defer_text",
            c.postfix.defer_text.is_some(),
            "replies.reasons.dns_tempfail",
            r.reasons.contains_key(&ReasonKey(Reason::DnsTempfail)),
        ),
    ] {
        refuse(
            old,
            set && new_set,
            format!("an old name of `{new}`, which is set too: keep one"),
        );
    }
    let mut disagreeing = HashSet::new();
    for (reason, reply) in c.replies().iter() {
        // The key that made the disagreement: the reason's own, else the default's.
        let key = match r.reasons.get(&ReasonKey(reason)) {
            Some(keys) if keys.code.is_some() => {
                format!("replies.reasons.{}.code", reason.as_str())
            }
            Some(keys) if keys.enhanced.is_some() => {
                format!("replies.reasons.{}.enhanced", reason.as_str())
            }
            _ if r.code.is_some() || r.enhanced.is_none() => "replies.code".to_owned(),
            _ => "replies.enhanced".to_owned(),
        };
        refuse(
            &key,
            !reply.classes_agree() && disagreeing.insert(key.clone()),
            format!(
                "{} does not agree with the enhanced code {} (RFC 3463: the same class)",
                reply.code,
                reply.enhanced.as_ref().map_or("", |e| e.0.as_str())
            ),
        );
    }
    found
}

fn has_duplicates<T: Eq + Hash>(items: &[T]) -> bool {
    items.iter().collect::<HashSet<_>>().len() != items.len()
}

fn valid_weight(weight: f64) -> bool {
    weight.is_finite() && weight >= 0.0
}

fn valid_interface_name(name: &str) -> bool {
    (1..=MAX_INTERFACE_NAME).contains(&name.len())
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

fn socket_path_too_long(path: &Path) -> bool {
    path.as_os_str().len() > MAX_SOCKET_PATH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refused_value_names_file_line_and_key() {
        let configs = xtask::corpus::refused_configs();
        assert!(
            configs.len() >= 20,
            "{} refused configurations",
            configs.len()
        );
        for c in configs {
            let error = Loaded::parse(c.text, c.name.clone())
                .and_then(Loaded::validate)
                .expect_err(&c.name)
                .to_string();
            let located = format!("{}:{}:1: key `{}`: ", c.name, c.line, c.key);
            assert!(error.starts_with(&located), "{}: {error}", c.name);
            assert!(error.contains(&c.words), "{}: {error}", c.name);
        }
    }

    #[test]
    fn a_value_set_by_a_flag_is_reported_against_the_flag() {
        let mut loaded = Loaded::parse(
            "[enforce]\nheartbeat_timeout_ms = 5000\n".to_owned(),
            "t.toml".to_owned(),
        )
        .expect("parses");
        let slot = &mut loaded.config.enforce.heartbeat_timeout_ms;
        loaded.flags.set(
            "enforce.heartbeat_timeout_ms",
            "--heartbeat-timeout-ms",
            Some(10),
            slot,
        );
        let error = loaded.validate().expect_err("10 ms").to_string();
        assert!(
            error.starts_with("--heartbeat-timeout-ms: at least 1000 ms"),
            "{error}"
        );
    }

    #[test]
    fn the_defaults_and_a_full_valid_file_pass() {
        assert!(Loaded::defaults().validate().is_ok());
        let text = "[kernel]\nsmtp_ports = [25, 587]\ninterfaces = [\"eth0\"]\n\
                    [enforce]\nheartbeat_timeout_ms = 1000\ngate_deadline_ms = 300000\n\
                    [reputation]\nsoft_score_weight = 0.5\n";
        let valid = Loaded::parse(text.to_owned(), "t.toml".to_owned()).and_then(Loaded::validate);
        assert!(valid.is_ok(), "{valid:?}");
    }
}
