//! A client of the Postfix policy-delegation protocol, as Postfix's smtpd speaks it: one
//! request (`name=value` lines, an empty line) and one reply (`action=…`, an empty line) at a
//! time on a persistent connection.

use std::io::{BufRead as _, BufReader, Read, Write};

/// A request with the attributes smtpd sends at RCPT time that the service reads.
pub fn rcpt_request(client: &str, helo: &str, instance: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={client}\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name={helo}\nsender=a@example.net\nrecipient=postmaster@example.org\n\
         instance={instance}\n\n"
    )
}

/// One connection to the service.
pub struct PolicyClient<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> PolicyClient<S> {
    pub fn new(stream: S) -> Self {
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
