//! A plain HTTP/1.0 GET, enough for the tests' and benchmarks' metrics pages and
//! Prometheus's API (no client library for three call sites).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// GETs `target` (path and query) from `addr`: the status code and the body.
pub fn get(addr: SocketAddr, target: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP body: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// [`get`], for a 200 answer only: its body.
pub fn get_ok(addr: SocketAddr, target: &str) -> anyhow::Result<String> {
    match get(addr, target)? {
        (200, body) => Ok(body),
        (status, body) => bail!("GET {target} from {addr}: {status} {body}"),
    }
}
