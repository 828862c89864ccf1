//! A small blocking HTTP/1.1 client: what the `serve` CLI uses to talk to a
//! running server's admin API, and what tests use to send requests. One
//! request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::error::{Error, Result};

/// A response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body (chunked bodies are decoded).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `body` to `addr` (`host:port`) and reads the reply.
pub fn request(addr: &str, method: &str, path: &str, body: &[u8], timeout: Duration) -> Result<Reply> {
    request_with(addr, method, path, &[], body, timeout)
}

/// [`request`] with extra headers (`("Authorization", "Bearer ...")`).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Reply> {
    let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {addr}"), e);
    let mut s = TcpStream::connect(addr).map_err(|e| io("connecting to", e))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| io("configuring", e))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| io("configuring", e))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| io("writing to", e))?;
    s.write_all(body).map_err(|e| io("writing to", e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| io("reading from", e))?;
    parse(&raw).ok_or_else(|| Error::Io {
        context: format!("reading from {addr}"),
        message: "not an HTTP response".into(),
    })
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = unchunk(&body)?;
    }
    Some(Reply { status, headers, body })
}

fn unchunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_replies() {
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-length: 2\r\n\r\nno").unwrap();
        assert_eq!(
            (r.status, r.header("retry-after"), r.text().as_str()),
            (503, Some("1"), "no")
        );
        let r =
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.text(), "abcde");
        assert!(parse(b"garbage").is_none());
    }
}
