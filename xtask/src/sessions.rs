//! SMTP sessions played from the lab's client namespace: swaks for whole, real
//! sessions, and a raw client for what swaks cannot do (a HELO written a few bytes per
//! segment, a command other than HELO first).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Stdio,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    lab::{Lab, MX_V4, MX_V6, SMTP_PORT},
    netns::in_netns,
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
/// an error if it does not complete.
pub fn swaks(lab: &Lab, client: SocketAddr, greeting: Greeting, name: &str) -> anyhow::Result<()> {
    let (completed, transcript) = swaks_transcript(lab, client, greeting, name)?;
    if !completed {
        bail!("swaks from {client} with {name:?} did not complete:\n{transcript}");
    }
    Ok(())
}

/// Runs the swaks session and returns whether it completed, and its transcript (what was
/// sent, `->`, what came back, `<-`, and swaks's own `***` errors).
pub fn swaks_transcript(
    lab: &Lab,
    client: SocketAddr,
    greeting: Greeting,
    name: &str,
) -> anyhow::Result<(bool, String)> {
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
    let out = command
        .stdin(Stdio::null())
        .output()
        .context("running swaks")?;
    let mut transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    transcript.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), transcript))
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
        let stream = connect_from(client, server)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("reading the greeting")?;
        let mut writer = stream;
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

/// Connects from `client` (address and port) with SO_REUSEADDR, so that the fixed
/// ports the tests use are free again right after a session.
pub fn connect_from(client: SocketAddr, server: SocketAddr) -> anyhow::Result<TcpStream> {
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
        .connect_timeout(&server.into(), Duration::from_secs(5))
        .with_context(|| format!("connect {client} -> {server}"))?;
    Ok(socket.into())
}
