//! End to end, action `reply`, seen from a real *sending* MTA: a Postfix in the client
//! namespace relays to the lab's MX (smtp-sink behind the filter). Greeting with a bogus HELO,
//! it reads the filter's `550 5.7.1` in reply to its MAIL FROM and bounces the message at once,
//! with a DSN to the sender that carries the reason; with action `rst` the same message is only
//! deferred (a lost connection, retried for days). A sender with a proper HELO is delivered,
//! and a sender whose STARTTLS the filter refuses goes on in plain text and bounces too.

use std::time::{Duration, Instant};

use helo_filter_tests::e2e::*;
use xtask::{
    daemon::Daemon,
    lab::{self, Lab, PostfixInstance},
    process,
};

const SENDER: &str = "sender@example.net";
const RECIPIENT: &str = "postmaster@example.org";
/// How long a message may take to reach its first outcome (normally well under a second).
const OUTCOME_WITHIN: Duration = Duration::from_secs(30);

fn start(lab: &Lab, action: &str) -> Daemon {
    Daemon::start(
        lab,
        &["--action", action, NO_REPUTATION[0], NO_REPUTATION[1]],
        false,
    )
    .expect("starting the daemon")
}

/// Submits a small message from [`SENDER`] to [`RECIPIENT`] through `postfix`.
fn submit(postfix: &PostfixInstance, what: &str) {
    postfix
        .sendmail(SENDER, RECIPIENT, &format!("A {what} message of the lab."))
        .unwrap_or_else(|e| panic!("submitting the {what} message: {e:#}"));
}

/// The first log line of `postfix` with an outcome (`status=`) for [`RECIPIENT`], waited for
/// at most [`OUTCOME_WITHIN`]; fails with the whole log.
fn outcome(postfix: &PostfixInstance, what: &str) -> String {
    let to = format!("to=<{RECIPIENT}>");
    let find = || {
        postfix
            .log()
            .lines()
            .find(|l| l.contains(&to) && l.contains(" status="))
            .map(str::to_owned)
    };
    let _ = process::wait_until(OUTCOME_WITHIN, || find().is_some());
    find().unwrap_or_else(|| {
        panic!(
            "the {what} message had no outcome within {OUTCOME_WITHIN:?}:\n{}",
            postfix.log()
        )
    })
}

/// The sending Postfix's view of action `reply` (bounced, with a DSN; a good HELO delivered)
/// and of action `rst` (deferred), over IPv4.
#[test]
fn a_sending_postfix_bounces_on_the_reply_and_only_defers_on_a_reset() {
    let started = Instant::now();
    {
        let lab = lab("rsb");
        let daemon = start(&lab, "reply");
        // Dropped before the lab (declared after it): each stops while its namespace exists.
        let bogus = lab
            .start_sending_postfix("localhost", lab::client_v4(1), "none")
            .expect("starting the bogus sending Postfix");
        let good = lab
            .start_sending_postfix("mail.example.net", lab::client_v4(0), "none")
            .expect("starting the good sending Postfix");
        submit(&bogus, "bogus");
        submit(&good, "good");

        let bounced = outcome(&bogus, "bogus");
        eprintln!("reply, localhost: {bounced}");
        let said = "said: 550 5.7.1 Access denied - bogus HELO (localhost) \
                    (in reply to MAIL FROM command)";
        assert!(
            bounced.contains(" status=bounced ") && bounced.contains(said),
            "not bounced on the filter's 550: {bounced}\n{}",
            bogus.log()
        );
        assert!(bounced.contains(" dsn=5.7.1,"), "{bounced}");

        // The DSN goes to the sender (example.net is local to the sending Postfix).
        let _ = process::wait_until(OUTCOME_WITHIN, || !bogus.mailbox().is_empty());
        let dsns = bogus.mailbox();
        let log = bogus.log();
        let bounce = log
            .lines()
            .find(|l| l.contains("sender non-delivery notification:"))
            .unwrap_or_else(|| panic!("no bounce notification logged:\n{log}"));
        eprintln!("reply, localhost: {bounce}");
        assert_eq!(dsns.len(), 1, "one DSN to {SENDER}:\n{log}");
        let dsn = &dsns[0];
        // The notice for people is wrapped at 76 columns: compare it with runs of white space
        // made one space.
        let unwrapped = dsn.split_whitespace().collect::<Vec<_>>().join(" ");
        let notice = format!("<{RECIPIENT}>: host 198.51.100.25[198.51.100.25] {said}");
        assert!(
            unwrapped.contains(&notice),
            "the DSN's notice lacks {notice:?}:\n{dsn}"
        );
        for part in [
            "Subject: Undelivered Mail Returned to Sender",
            "Action: failed",
            "Status: 5.7.1",
            "Remote-MTA: dns; 198.51.100.25",
            "Diagnostic-Code: smtp; 550 5.7.1 Access denied - bogus HELO (localhost)",
            &format!("Final-Recipient: rfc822; {RECIPIENT}"),
        ] {
            assert!(dsn.contains(part), "the DSN lacks {part:?}:\n{dsn}");
        }
        let delivered = log
            .lines()
            .find(|l| l.contains(&format!("to=<{SENDER}>")) && l.contains(" status=sent "))
            .unwrap_or_else(|| panic!("the DSN was not delivered to {SENDER}:\n{log}"));
        eprintln!("reply, localhost: {delivered}");

        let sent = outcome(&good, "good");
        eprintln!("reply, mail.example.net: {sent}");
        assert!(
            sent.contains(" status=sent ") && sent.contains("relay=198.51.100.25["),
            "the good message was not delivered: {sent}\n{}",
            good.log()
        );
        assert!(good.mailbox().is_empty(), "the good sender got mail back");

        let verdict = daemon
            .lines()
            .into_iter()
            .find(|l| l.contains(&format!("client={}:", lab::client_v4(1))))
            .unwrap_or_else(|| panic!("no verdict line:\n{}", daemon.lines().join("\n")));
        assert!(verdict.ends_with("action=reply"), "{verdict}");
        drop((bogus, good));
        daemon.stop().expect("stopping the daemon");
    }
    eprintln!("reply phase: {:?}", started.elapsed());

    let started = Instant::now();
    {
        let lab = lab("rsr");
        let daemon = start(&lab, "rst");
        let bogus = lab
            .start_sending_postfix("localhost", lab::client_v4(1), "none")
            .expect("starting the bogus sending Postfix");
        submit(&bogus, "bogus");
        let deferred = outcome(&bogus, "bogus");
        eprintln!("rst, localhost: {deferred}");
        assert!(
            deferred.contains(" status=deferred ") && deferred.contains("lost connection"),
            "not deferred on a lost connection: {deferred}\n{}",
            bogus.log()
        );
        let log = bogus.log();
        assert!(!log.contains("status=bounced"), "{log}");
        assert!(bogus.mailbox().is_empty(), "a DSN under rst:\n{log}");
        drop(bogus);
        daemon.stop().expect("stopping the daemon");
    }
    eprintln!("rst phase: {:?}", started.elapsed());

    // An MX Postfix that offers STARTTLS, a sender that uses it when offered (Debian's
    // `smtp_tls_security_level = may`): the filter refuses the STARTTLS, the sender goes on in
    // plain text, and its MAIL FROM reads the reject: bounced, not deferred.
    let started = Instant::now();
    {
        let lab = postfix_lab_with(
            "rst",
            "smtpd_tls_security_level = may\n\
             smtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem\n\
             smtpd_tls_key_file = /etc/ssl/private/ssl-cert-snakeoil.key",
        );
        let daemon = start(&lab, "reply");
        let bogus = lab
            .start_sending_postfix("localhost", lab::client_v4(1), "may")
            .expect("starting the bogus sending Postfix");
        submit(&bogus, "bogus");
        let bounced = outcome(&bogus, "bogus");
        eprintln!("reply, STARTTLS offered, localhost: {bounced}");
        assert!(
            bounced.contains(" status=bounced ")
                && bounced.contains("(in reply to MAIL FROM command)")
                && bounced.contains("550 5.7.1 Access denied - bogus HELO (localhost)"),
            "not bounced on the filter's 550 after STARTTLS: {bounced}\n{}",
            bogus.log()
        );
        drop(bogus);
        daemon.stop().expect("stopping the daemon");
    }
    eprintln!("STARTTLS phase: {:?}", started.elapsed());
}
