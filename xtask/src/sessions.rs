//! SMTP sessions played from the lab's client namespace: swaks for whole, real
//! sessions, and a raw client for what swaks cannot do (a HELO written a few bytes per
//! segment, a command other than HELO first).

use std::{
    io::{BufRead, BufReader, Read, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    lab::{Lab, MX_V4, MX_V6, SMTP_PORT},
    netns::in_netns,
    process::wait_until,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greeting {
    Helo,
    Ehlo,
}

/// The MX address of the client's family.
pub fn mx_for(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => IpAddr::V4(MX_V4),
        IpAddr::V6(_) => IpAddr::V6(MX_V6),
    }
}

/// One complete mail transaction with swaks from `client:port`, greeting with `name`;
/// an error if it does not complete (saying whether swaks could not connect, or the
/// session was refused or cut).
pub fn swaks(lab: &Lab, client: SocketAddr, greeting: Greeting, name: &str) -> anyhow::Result<()> {
    let run = swaks_run(lab, client, greeting, name)?;
    if run.outcome != SwaksOutcome::Completed {
        bail!(
            "swaks from {client} with {name:?}: {}:\n{}",
            run.outcome,
            run.transcript
        );
    }
    Ok(())
}

/// How a swaks session ended, read from its exit status and transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwaksOutcome {
    /// The mail transaction completed.
    Completed,
    /// swaks never got a connection to the server: it could not connect (refused, timed
    /// out: a SYN dropped, for one). Its `***` error lines.
    NoConnection(String),
    /// Connected, then the connection was closed or reset before the transaction completed
    /// (what the filter's reset looks like): the last command swaks sent, and its error.
    Cut { after: String, error: String },
    /// The server answered a command with an error reply (swaks's exit status names the
    /// command: 21 banner, 22 HELO, 23 MAIL, 24 RCPT, 25/26 DATA).
    Refused { reply: String },
}

impl SwaksOutcome {
    pub fn completed(&self) -> bool {
        *self == SwaksOutcome::Completed
    }

    /// Whether swaks connected to the server (whatever happened next).
    pub fn connected(&self) -> bool {
        !matches!(self, SwaksOutcome::NoConnection(_))
    }
}

impl std::fmt::Display for SwaksOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwaksOutcome::Completed => write!(f, "session completed"),
            SwaksOutcome::NoConnection(error) => {
                write!(f, "the client could not connect: {error}")
            }
            SwaksOutcome::Cut { after, error } => {
                write!(f, "connection cut after {after}: {error}")
            }
            SwaksOutcome::Refused { reply } => write!(f, "refused by the server: {reply}"),
        }
    }
}

/// A swaks session: how it ended, its exit status and its transcript.
#[derive(Clone, Debug)]
pub struct SwaksRun {
    pub outcome: SwaksOutcome,
    pub exit: Option<i32>,
    /// What was sent (`->`), what came back (`<-`), and swaks's own `***` errors.
    pub transcript: String,
}

/// Runs the swaks session and returns whether it completed, and its transcript (what was
/// sent, `->`, what came back, `<-`, and swaks's own `***` errors). An error when swaks
/// itself could not run the session (a missing Perl module such as IO::Socket::INET6 for
/// IPv6, a bad option): that is never a session outcome.
pub fn swaks_transcript(
    lab: &Lab,
    client: SocketAddr,
    greeting: Greeting,
    name: &str,
) -> anyhow::Result<(bool, String)> {
    let run = swaks_run(lab, client, greeting, name)?;
    Ok((run.outcome.completed(), run.transcript))
}

/// [`swaks_transcript`] with the outcome classified.
pub fn swaks_run(
    lab: &Lab,
    client: SocketAddr,
    greeting: Greeting,
    name: &str,
) -> anyhow::Result<SwaksRun> {
    let mut command = lab.command_in(&lab.client_ns, "swaks");
    command
        .args(["--server", &mx_for(client.ip()).to_string()])
        .args(["--port", &SMTP_PORT.to_string()])
        .args(["--local-interface", &client.ip().to_string()])
        .args(["--local-port", &client.port().to_string()])
        .args(["--helo", name])
        .args([
            "--from",
            "sender@example.net",
            "--to",
            "postmaster@example.org",
        ])
        .args(["--timeout", "10"]);
    if greeting == Greeting::Helo {
        command.args(["--protocol", "SMTP"]);
    }
    command.stdin(Stdio::null());
    let out =
        output_within(&mut command, SWAKS_LIMIT).context("running swaks (Debian package swaks)")?;
    let mut transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    transcript.push_str(&String::from_utf8_lossy(&out.stderr));
    let exit = out.status.code();
    let outcome = classify_swaks(exit, &transcript).map_err(|error| {
        anyhow::anyhow!("swaks from {client} could not run the session (exit {exit:?}): {error}")
    })?;
    Ok(SwaksRun {
        outcome,
        exit,
        transcript,
    })
}

/// The longest a swaks session may take: its `--timeout 10` bounds each step, a whole
/// session has six; past this it is killed and the session is an error.
const SWAKS_LIMIT: Duration = Duration::from_secs(90);

/// `command.output()`, but a child still running after `limit` is killed and reported as an
/// error (its pipes are read by threads, so no read blocks past the child's end).
fn output_within(command: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let ended = wait_until(limit, || child.try_wait().ok().flatten().is_some());
    if ended.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("still running after {limit:?}: killed");
    }
    let status = child.wait()?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// swaks's own error lines (`*** …`), joined; or `fallback` when it printed none.
fn swaks_errors(transcript: &str, fallback: &str) -> String {
    let errors: Vec<&str> = transcript
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("***"))
        .map(str::trim)
        .collect();
    if errors.is_empty() {
        fallback.to_owned()
    } else {
        errors.join(" ")
    }
}

/// Classifies a swaks run from its exit status (swaks(1), EXIT CODES) and transcript; an
/// error (its text) when swaks failed as a program rather than as an SMTP client: options
/// refused (1), a connection type it lacks (3), a missing prerequisite module (10: IPv6
/// without IO::Socket::INET6), killed by a signal.
pub fn classify_swaks(exit: Option<i32>, transcript: &str) -> Result<SwaksOutcome, String> {
    let connected = transcript
        .lines()
        .any(|l| l.starts_with("=== Connected to"));
    let sent: Vec<&str> = transcript
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("->"))
        .map(str::trim)
        .collect();
    let last_reply = transcript
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("<**"))
        .map(str::trim);
    match exit {
        Some(0) => Ok(SwaksOutcome::Completed),
        Some(1 | 3 | 10) | None => Err(swaks_errors(transcript, "no error text")),
        _ if !connected => Ok(SwaksOutcome::NoConnection(swaks_errors(
            transcript,
            "no error text",
        ))),
        Some(21..=26) if last_reply.is_some() => Ok(SwaksOutcome::Refused {
            reply: last_reply.unwrap_or_default().to_owned(),
        }),
        Some(_) => Ok(SwaksOutcome::Cut {
            after: sent
                .last()
                .map_or_else(|| "connecting".to_owned(), |c| (*c).to_owned()),
            error: swaks_errors(transcript, "no error text"),
        }),
    }
}

/// Connects from `client`, reads the greeting, writes each chunk as its own segment
/// (`gap` apart, Nagle off), then reads one reply line (if the server sends one) and
/// says QUIT. Returns that reply line.
pub fn raw_session(
    lab: &Lab,
    client: SocketAddr,
    chunks: &[&[u8]],
    gap: Duration,
) -> anyhow::Result<String> {
    let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
    in_netns(&lab.client_ns, move || -> anyhow::Result<String> {
        let server = SocketAddr::new(mx_for(client.ip()), SMTP_PORT);
        let (mut reader, mut writer) =
            conversation(connect_from(client, server)?, Duration::from_secs(10))?;
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("reading the greeting")?;
        for chunk in &chunks {
            writer.write_all(chunk)?;
            writer.flush()?;
            thread::sleep(gap);
        }
        line.clear();
        reader.read_line(&mut line).context("reading the reply")?;
        // Pipelined commands get several replies; QUIT ends the session either way.
        writer.write_all(b"QUIT\r\n")?;
        Ok(line.trim_end().to_owned())
    })
}

/// A connected client's stream made ready for a conversation: Nagle off (each command its
/// own segment, as the tests mean), reads bounded by `read_timeout`, and split into a
/// buffered reader of replies and the writer.
pub fn conversation(
    stream: TcpStream,
    read_timeout: Duration,
) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(read_timeout))?;
    Ok((BufReader::new(stream.try_clone()?), stream))
}

/// The code of a (possibly multi-line) reply; `None` when the connection failed.
pub fn reply_code(reader: &mut impl BufRead) -> Option<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.len() >= 4 && line.as_bytes()[3] == b'-' {
            continue;
        }
        return line.get(..3)?.parse().ok();
    }
}

/// How long the lab's clients wait for a connection: long enough for a SYN lost in a
/// burst (a full listen queue) to be sent again after a second.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects from `client` (address and port) with SO_REUSEADDR, so that the fixed
/// ports the tests use are free again right after a session.
pub fn connect_from(client: SocketAddr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    connect_from_within(client, server, CONNECT_TIMEOUT)
}

/// [`connect_from`] with a time limit of `timeout`.
pub fn connect_from_within(
    client: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(client),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&client.into())
        .with_context(|| format!("bind {client}"))?;
    socket
        .connect_timeout(&server.into(), timeout)
        .with_context(|| format!("connect {client} -> {server}"))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        time::{Duration, Instant},
    };

    use super::{SwaksOutcome, classify_swaks, output_within};

    #[test]
    fn a_child_past_its_limit_is_killed_and_an_error() {
        let started = Instant::now();
        let error = output_within(Command::new("sleep").arg("30"), Duration::from_millis(500))
            .expect_err("still running");
        assert!(error.to_string().contains("killed"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let out =
            output_within(Command::new("echo").arg("hi"), Duration::from_secs(10)).expect("echo");
        assert_eq!(out.stdout, b"hi\n");
    }

    // Transcripts as swaks 20240103 prints them (stdout, then stderr).
    #[test]
    fn a_missing_ipv6_module_is_an_error_of_swaks_never_an_outcome() {
        let transcript = "*** IPv6 not available: requires IO::Socket::INET6.  Exiting\n";
        let error = classify_swaks(Some(10), transcript).expect_err("not an outcome");
        assert_eq!(
            error,
            "IPv6 not available: requires IO::Socket::INET6.  Exiting"
        );
    }

    #[test]
    fn a_refused_connection_is_no_connection() {
        let transcript = "=== Trying ::1:9...\n*** Error connecting to ::1:9:\n\
                          *** \tIO::Socket::INET6: connect: Connection refused\n";
        assert_eq!(
            classify_swaks(Some(2), transcript),
            Ok(SwaksOutcome::NoConnection(
                "Error connecting to ::1:9: IO::Socket::INET6: connect: Connection refused"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn a_reset_after_the_greeting_is_a_cut_session() {
        let transcript = "=== Trying 127.0.0.1:2525...\n=== Connected to 127.0.0.1.\n\
                          <-  220 x ESMTP\n -> EHLO x.example\n\
                          *** Remote host closed connection unexpectedly.\n";
        let outcome = classify_swaks(Some(6), transcript).expect("an outcome");
        assert_eq!(
            outcome,
            SwaksOutcome::Cut {
                after: "EHLO x.example".to_owned(),
                error: "Remote host closed connection unexpectedly.".to_owned()
            }
        );
        assert!(outcome.connected() && !outcome.completed());
    }

    #[test]
    fn an_error_reply_is_a_refusal() {
        let transcript = "=== Connected to 198.51.100.25.\n<-  220 mx ESMTP\n\
                          -> EHLO x.example\n<-  250 mx\n -> MAIL FROM:<a@example.net>\n\
                          <** 550 5.7.1 no\n -> QUIT\n<-  221 bye\n";
        assert_eq!(
            classify_swaks(Some(23), transcript),
            Ok(SwaksOutcome::Refused {
                reply: "550 5.7.1 no".to_owned()
            })
        );
    }
}
