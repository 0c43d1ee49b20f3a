//! What the policy service answers: one request's HELO judged by the engine, the verdict
//! turned into a Postfix action, each SMTP session logged (and fed to reputation) once.
//!
//! Postfix's habits: in monitor mode a bogus HELO is answered `WARN bogus HELO (<reason>)`,
//! so that Postfix logs it in the maillog; a request at `protocol_state=CONNECT`, before any
//! HELO, is answered `DUNNO` (a check placed there would otherwise reject every client for
//! a HELO it has not sent yet), with a warning logged once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use log::{info, warn};
use parking_lot::Mutex;

use super::protocol::{Received, Request};
use crate::{
    config::Replies,
    logging::{self, Judged},
    metrics,
    metrics::Outcome,
    pipeline::{
        smtp::escape_for_log,
        stage::{SharedEngine, current},
    },
    policy::{HeloInput, Reason, Verdict},
};

/// Sessions remembered for de-duplication (Postfix asks once per recipient).
const SESSIONS_REMEMBERED: usize = 65_536;
/// A session seen longer ago than this is forgotten first when the memory is full.
const SESSION_MEMORY: Duration = Duration::from_secs(600);

/// Called once per SMTP session with a rejected HELO (the daemon feeds its reputation).
pub type RejectHook = Box<dyn Fn(IpAddr, &Verdict) + Send + Sync>;

/// The policy service shared by every connection.
pub struct PolicyService {
    engine: SharedEngine,
    replies: Replies,
    /// Rejections are logged and counted but answered `WARN`.
    monitor: bool,
    /// Count each session's verdict in the verdict series: the standalone service's only
    /// judge (in the daemon those series count the data path's verdicts).
    counts_verdicts: bool,
    /// A request came at `protocol_state=CONNECT` (warned about once).
    warned_connect: AtomicBool,
    on_reject: Option<RejectHook>,
    sessions: Mutex<HashMap<String, Instant>>,
}

impl PolicyService {
    pub fn new(
        engine: SharedEngine,
        replies: Replies,
        monitor: bool,
        on_reject: Option<RejectHook>,
    ) -> PolicyService {
        PolicyService {
            engine,
            replies,
            monitor,
            counts_verdicts: false,
            warned_connect: AtomicBool::new(false),
            on_reject,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The standalone service: its verdicts go into the verdict series.
    pub fn counting_verdicts(mut self) -> PolicyService {
        self.counts_verdicts = true;
        self
    }

    /// The action for what was read (never fails: anything unusable gets `DUNNO`).
    pub async fn answer(&self, received: Received) -> String {
        let (outcome, action) = match received {
            Received::Request(request) => match self.judge(&request).await {
                Ok(answer) => answer,
                Err(why) => {
                    let instance = request.get("instance").unwrap_or_default();
                    warn!(
                        "policy request instance=\"{}\": {why}; answered DUNNO",
                        escape_for_log(instance)
                    );
                    (Outcome::Error, "DUNNO".to_owned())
                }
            },
            Received::Malformed(why) => {
                warn!("malformed policy request: {why}; answered DUNNO");
                (Outcome::Error, "DUNNO".to_owned())
            }
            Received::Closed => unreachable!("nothing to answer on a closed connection"),
        };
        metrics::policy_request(outcome);
        action
    }

    async fn judge(&self, request: &Request) -> Result<(Outcome, String), String> {
        match request.get("request") {
            Some(b"smtpd_access_policy") => {}
            Some(other) => {
                return Err(format!(
                    "request=\"{}\" is not smtpd_access_policy",
                    escape_for_log(other)
                ));
            }
            None => return Err("no request attribute".to_owned()),
        }
        let client: IpAddr = request
            .text("client_address")
            .ok_or("no client_address attribute")?
            .parse()
            .map_err(|_| "client_address is not an IP address")?;
        let helo = request.get("helo_name").ok_or("no helo_name attribute")?;
        if helo.is_empty() && request.get("protocol_state") == Some(b"CONNECT") {
            self.warn_connect_once();
            return Ok((Outcome::Dunno, "DUNNO".to_owned()));
        }
        let mut input = if helo.is_empty() {
            // The client never said HELO/EHLO.
            HeloInput::without_helo(client)
        } else {
            HeloInput::new(helo, client)
        };
        input.reverse_name = ["client_name", "reverse_client_name"]
            .iter()
            .filter_map(|name| request.text(name))
            .find(|name| !name.is_empty() && *name != "unknown")
            .map(str::to_owned);
        let started = Instant::now();
        let verdict = current(&self.engine).evaluate(&input).await;
        let (outcome, action) = self.action(&verdict);
        let instance = request.text("instance").unwrap_or_default();
        if self.first_request_of(instance) {
            if self.counts_verdicts {
                metrics::verdict(&verdict, started.elapsed());
            }
            report(client, helo, instance, &verdict, &action);
            if verdict.is_reject()
                && let Some(hook) = &self.on_reject
            {
                hook(client, &verdict);
            }
        }
        Ok((outcome, action))
    }

    fn action(&self, verdict: &Verdict) -> (Outcome, String) {
        match verdict.primary() {
            None => (Outcome::Dunno, "DUNNO".to_owned()),
            // Postfix logs a WARN's text in the maillog and goes on.
            Some(reason) if self.monitor => (
                Outcome::Warn,
                format!("WARN bogus HELO ({})", reason.as_str()),
            ),
            // Deferred only if nothing else rejects the mail: Postfix answers 450 then.
            Some(reason @ Reason::DnsTempfail) => (
                Outcome::Defer,
                format!(
                    "DEFER_IF_PERMIT {}",
                    self.replies.reply(reason).text_for(reason)
                ),
            ),
            Some(reason) => {
                let reply = self.replies.reply(reason);
                let outcome = if reply.is_temporary() {
                    Outcome::Defer
                } else {
                    Outcome::Reject
                };
                (outcome, reply.line_for(reason))
            }
        }
    }

    fn warn_connect_once(&self) {
        if !self.warned_connect.swap(true, Ordering::Relaxed) {
            warn!(
                "policy request at protocol_state=CONNECT, before any HELO: answered DUNNO; \
                 call check_policy_service from smtpd_helo_restrictions or later \
                 (smtpd_recipient_restrictions) for the HELO to be judged"
            );
        }
    }

    /// Whether this is the first request of its SMTP session seen lately (a request without
    /// `instance` counts as a session of its own).
    fn first_request_of(&self, instance: &str) -> bool {
        if instance.is_empty() {
            return true;
        }
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        if sessions.len() >= SESSIONS_REMEMBERED && !sessions.contains_key(instance) {
            sessions.retain(|_, seen| now.duration_since(*seen) < SESSION_MEMORY);
            if sessions.len() >= SESSIONS_REMEMBERED {
                warn!(
                    "policy service: {SESSIONS_REMEMBERED} sessions in {SESSION_MEMORY:?}; forgetting them"
                );
                sessions.clear();
            }
        }
        sessions.insert(instance.to_owned(), now).is_none()
    }
}

/// One log line per SMTP session, like the data path's.
fn report(client: IpAddr, helo: &[u8], instance: &str, verdict: &Verdict, action: &str) {
    if logging::json() {
        let line = escape_for_log(helo);
        let judged = Judged {
            kind: "policy",
            client: &client,
            server: None,
            verb: None,
            pipelined: None,
            cause: None,
            line: &line,
            instance: Some(instance),
        };
        logging::verdict_json(&judged, verdict, action, None);
        return;
    }
    let reasons: Vec<&str> = verdict.reason_codes().map(|r| r.as_str()).collect();
    let notes: Vec<&str> = verdict.notes.iter().map(|n| n.as_str()).collect();
    info!(
        "policy client={client} instance={} line=\"{}\" verdict={} reasons={} score={} notes={}{} action=\"{action}\"",
        escape_for_log(instance.as_bytes()),
        escape_for_log(helo),
        verdict.decision.as_str(),
        reasons.join(","),
        verdict.score,
        notes.join(","),
        verdict.dns_error_field(),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::{
        policy::{PolicyEngine, PolicySettings},
        postfix::protocol::read_request,
    };

    async fn request(pairs: &[(&str, &str)]) -> Received {
        let text: String = pairs.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        let bytes = format!("{text}\n").into_bytes();
        read_request(&mut bytes.as_slice())
            .await
            .expect("in memory")
    }

    fn rcpt(helo: &'static str, instance: &'static str) -> [(&'static str, &'static str); 5] {
        [
            ("request", "smtpd_access_policy"),
            ("client_address", "203.0.113.9"),
            ("client_name", "unknown"),
            ("helo_name", helo),
            ("instance", instance),
        ]
    }

    /// A service with an offline engine whose hook counts the rejections it is told of.
    fn service(monitor: bool) -> (PolicyService, Arc<AtomicUsize>) {
        let told = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&told);
        let hook: RejectHook = Box::new(move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let engine = PolicyEngine::new(PolicySettings::default(), None);
        let engine = Arc::new(parking_lot::RwLock::new(engine));
        let service = PolicyService::new(engine, Replies::default(), monitor, Some(hook));
        (service, told)
    }

    #[tokio::test]
    async fn a_session_is_reported_once_however_many_recipients() {
        let (service, told) = service(false);
        for instance in ["s1", "s1", "s1", "s2"] {
            let got = service
                .answer(request(&rcpt("localhost", instance)).await)
                .await;
            assert_eq!(got, "550 5.7.1 Access denied - bogus HELO (localhost)");
        }
        assert_eq!(told.load(Ordering::Relaxed), 2);
        let got = service
            .answer(request(&rcpt("mail.example.net", "s3")).await)
            .await;
        assert_eq!(got, "DUNNO");
        assert_eq!(
            told.load(Ordering::Relaxed),
            2,
            "an accept is not a rejection"
        );
    }

    #[tokio::test]
    async fn monitor_mode_answers_warn_and_still_remembers() {
        let (service, told) = service(true);
        let got = service
            .answer(request(&rcpt("localhost", "m1")).await)
            .await;
        assert_eq!(got, "WARN bogus HELO (localhost)");
        assert_eq!(told.load(Ordering::Relaxed), 1);
        let got = service
            .answer(request(&rcpt("mail.example.net", "m2")).await)
            .await;
        assert_eq!(got, "DUNNO", "an accept is no warning");
    }

    #[tokio::test]
    async fn a_request_at_connect_before_any_helo_is_dunno_and_no_rejection() {
        let (service, told) = service(false);
        let mut connect = rcpt("", "c1").to_vec();
        connect.push(("protocol_state", "CONNECT"));
        assert_eq!(service.answer(request(&connect).await).await, "DUNNO");
        assert_eq!(told.load(Ordering::Relaxed), 0);
        // Past CONNECT an empty HELO is a client that never sent one.
        let mut rcpt_state = rcpt("", "c2").to_vec();
        rcpt_state.push(("protocol_state", "RCPT"));
        assert_eq!(
            service.answer(request(&rcpt_state).await).await,
            "550 5.7.1 Access denied - bogus HELO (no_helo)"
        );
    }

    #[tokio::test]
    async fn incomplete_requests_are_answered_dunno() {
        let (service, told) = service(false);
        let cases: [&[(&str, &str)]; 4] = [
            &[
                ("client_address", "203.0.113.9"),
                ("helo_name", "localhost"),
            ],
            &[
                ("request", "junk"),
                ("client_address", "203.0.113.9"),
                ("helo_name", "localhost"),
            ],
            &[
                ("request", "smtpd_access_policy"),
                ("helo_name", "localhost"),
            ],
            &[
                ("request", "smtpd_access_policy"),
                ("client_address", "203.0.113.9"),
            ],
        ];
        for pairs in cases {
            assert_eq!(
                service.answer(request(pairs).await).await,
                "DUNNO",
                "{pairs:?}"
            );
        }
        assert_eq!(told.load(Ordering::Relaxed), 0);
    }
}
