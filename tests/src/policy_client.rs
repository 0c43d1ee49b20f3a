//! A client of the Postfix policy-delegation protocol, as Postfix's smtpd speaks it: one
//! request (`name=value` lines, an empty line) and one reply (`action=…`, an empty line) at a
//! time on a persistent connection.

use std::{
    io::{self, BufRead as _, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    time::Duration,
};

/// A request with the attributes smtpd sends at RCPT time that the service reads.
pub fn rcpt_request(client: &str, helo: &str, instance: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={client}\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name={helo}\nsender=a@example.net\nrecipient=postmaster@example.org\n\
         instance={instance}\n\n"
    )
}

/// How long a reply may take when the caller set no read timeout of its own.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream whose reads can time out (every read of the client has a timeout).
pub trait TimedStream: Read + Write {
    fn read_timeout(&self) -> io::Result<Option<Duration>>;
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedStream for TcpStream {
    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        TcpStream::read_timeout(self)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl TimedStream for UnixStream {
    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        UnixStream::read_timeout(self)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

/// One connection to the service.
pub struct PolicyClient<S: TimedStream> {
    reader: BufReader<S>,
}

impl<S: TimedStream> PolicyClient<S> {
    /// A client on `stream`; reads time out after [`REPLY_TIMEOUT`] unless the caller set a
    /// timeout already.
    pub fn new(stream: S) -> Self {
        if stream.read_timeout().expect("SO_RCVTIMEO").is_none() {
            stream
                .set_read_timeout(Some(REPLY_TIMEOUT))
                .expect("setting a read timeout");
        }
        PolicyClient {
            reader: BufReader::new(stream),
        }
    }

    /// Sends raw request bytes (ended by the caller's empty line) and returns the action
    /// (the text after `action=`); panics on anything but a well-formed reply.
    pub fn ask(&mut self, request: &[u8]) -> String {
        self.reader
            .get_mut()
            .write_all(request)
            .expect("writing a request");
        let mut action = String::new();
        self.reader
            .read_line(&mut action)
            .expect("reading the reply");
        let mut empty = String::new();
        self.reader
            .read_line(&mut empty)
            .expect("reading the reply's end");
        assert_eq!(
            empty, "\n",
            "the reply {action:?} is not ended by an empty line"
        );
        action
            .strip_prefix("action=")
            .unwrap_or_else(|| panic!("not an action: {action:?}"))
            .trim_end()
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::{io::ErrorKind, os::unix::net::UnixStream, time::Duration};

    use super::{PolicyClient, REPLY_TIMEOUT};

    #[test]
    fn every_read_has_a_timeout() {
        let (ours, _silent) = UnixStream::pair().expect("a socket pair");
        let client = PolicyClient::new(ours);
        let timeout = client.reader.get_ref().read_timeout().expect("SO_RCVTIMEO");
        assert_eq!(timeout, Some(REPLY_TIMEOUT));
        // A caller's own timeout is kept, and a silent service ends the read.
        let (ours, _silent) = UnixStream::pair().expect("a socket pair");
        ours.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut client = PolicyClient::new(ours);
        let mut line = String::new();
        let error =
            std::io::BufRead::read_line(&mut client.reader, &mut line).expect_err("no reply");
        assert!(
            matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{error}"
        );
    }
}
