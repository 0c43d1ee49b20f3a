//! Postfix's SMTPD access policy delegation protocol, as seen from the server: a request is
//! `name=value` lines ended by an empty line; the reply is `action=…` and an empty line.
//! Connections are persistent (one request after another).
//!
//! The reader is bounded: a line longer than [`MAX_LINE`] or a request with more than
//! [`MAX_ATTRIBUTES`] attributes is read to its end and reported as malformed, so that the
//! service can still answer it and the connection stays in step.

use std::collections::HashMap;

use tokio::io::AsyncBufRead;

use crate::io::line_reader::{Line, read_line};

/// The longest line read, in bytes (Postfix's attributes are short; certificate subjects
/// are the longest, well under this).
pub const MAX_LINE: usize = 4096;
/// Attributes in one request at most (Postfix 3.7 sends about 40).
pub const MAX_ATTRIBUTES: usize = 128;

/// One request's attributes. Values are bytes: a HELO name is whatever the client sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    attributes: HashMap<String, Vec<u8>>,
}

impl Request {
    /// An attribute's value, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.attributes.get(name).map(Vec::as_slice)
    }

    /// An attribute's value as text, if present and UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A well-formed request.
    Request(Request),
    /// A request read to its empty line but unusable: why.
    Malformed(String),
    /// The peer closed the connection (a request cut short is dropped: nobody waits for its
    /// reply).
    Closed,
}

/// Reads the next request.
pub async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Received> {
    let mut request = Request::default();
    let mut problem: Option<String> = None;
    let mut line = Vec::with_capacity(256);
    loop {
        match read_line(reader, &mut line, MAX_LINE).await? {
            Line::Eof => return Ok(Received::Closed),
            Line::Oversized => {
                problem.get_or_insert_with(|| format!("a line longer than {MAX_LINE} bytes"));
            }
            Line::Complete if line.is_empty() => {
                if problem.is_none() && request.attributes.is_empty() {
                    problem = Some("an empty request".to_owned());
                }
                return Ok(match problem {
                    Some(why) => Received::Malformed(why),
                    None => Received::Request(request),
                });
            }
            Line::Complete if problem.is_some() => {}
            Line::Complete => problem = add_attribute(&mut request, &line).err(),
        }
    }
}

fn add_attribute(request: &mut Request, line: &[u8]) -> Result<(), String> {
    let Some(eq) = line.iter().position(|&b| b == b'=') else {
        return Err("a line without `=`".to_owned());
    };
    let name = std::str::from_utf8(&line[..eq])
        .ok()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("an attribute name that is not printable ASCII")?;
    if request.attributes.len() == MAX_ATTRIBUTES {
        return Err(format!("more than {MAX_ATTRIBUTES} attributes"));
    }
    if request
        .attributes
        .insert(name.to_owned(), line[eq + 1..].to_vec())
        .is_some()
    {
        return Err(format!("attribute {name} given twice"));
    }
    Ok(())
}

/// The reply to one request: `action=…` and the empty line that ends it.
pub fn reply(action: &str) -> String {
    format!("action={action}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8]) -> Vec<Received> {
        let mut reader = tokio::io::BufReader::with_capacity(64, input);
        let mut out = Vec::new();
        loop {
            let received = read_request(&mut reader).await.expect("in memory");
            let closed = received == Received::Closed;
            out.push(received);
            if closed {
                return out;
            }
        }
    }

    fn request(pairs: &[(&str, &str)]) -> Received {
        let mut request = Request::default();
        for (name, value) in pairs {
            request
                .attributes
                .insert((*name).to_owned(), value.as_bytes().to_vec());
        }
        Received::Request(request)
    }

    #[tokio::test]
    async fn requests_follow_one_another_on_one_connection() {
        let input = b"request=smtpd_access_policy\nhelo_name=mail.example.net\nclient_address=203.0.113.7\n\n\
                      request=smtpd_access_policy\r\nhelo_name=\r\nempty=\r\nweird=a=b\r\n\r\n";
        let got = read_all(input).await;
        assert_eq!(
            got,
            vec![
                request(&[
                    ("request", "smtpd_access_policy"),
                    ("helo_name", "mail.example.net"),
                    ("client_address", "203.0.113.7"),
                ]),
                request(&[
                    ("request", "smtpd_access_policy"),
                    ("helo_name", ""),
                    ("empty", ""),
                    ("weird", "a=b"),
                ]),
                Received::Closed,
            ]
        );
    }

    #[tokio::test]
    async fn malformed_requests_are_read_to_their_end_and_the_next_one_still_parses() {
        let long = "x".repeat(MAX_LINE + 10);
        let many: String = (0..=MAX_ATTRIBUTES).map(|i| format!("a{i}=v\n")).collect();
        let input = format!(
            "helo_name={long}\nclient_address=203.0.113.7\n\n\
             no equals sign\n\n\
             =value\n\n\
             a=1\na=2\n\n\
             \n\
             {many}\n\
             helo_name=ok.example\n\n\
             request=cut short"
        );
        let got = read_all(input.as_bytes()).await;
        let malformed: Vec<&str> = got
            .iter()
            .filter_map(|r| match r {
                Received::Malformed(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            malformed,
            vec![
                "a line longer than 4096 bytes",
                "a line without `=`",
                "an attribute name that is not printable ASCII",
                "attribute a given twice",
                "an empty request",
                "more than 128 attributes",
            ]
        );
        assert_eq!(
            got[got.len() - 2..],
            [request(&[("helo_name", "ok.example")]), Received::Closed]
        );
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let value = "y".repeat(MAX_LINE - "helo_name=".len());
        let input = format!("helo_name={value}\r\n\n");
        let got = read_all(input.as_bytes()).await;
        assert_eq!(got[0], request(&[("helo_name", value.as_str())]));
    }

    #[test]
    fn replies_end_with_an_empty_line() {
        assert_eq!(reply("DUNNO"), "action=DUNNO\n\n");
    }
}
