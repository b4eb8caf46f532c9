//! Just enough HTTP/1.1 for this plugin: read a request head, route it, write a response.

use std::io::{self, Read};

/// Longest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD_LEN: usize = 8 * 1024;

/// A plain-text response, always sent with `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub body: String,
}

impl Response {
    fn new(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            body: body.into(),
        }
    }

    pub fn bad_request() -> Self {
        Self::new(400, "Bad Request", "bad request")
    }

    pub fn busy() -> Self {
        Self::new(
            503,
            "Service Unavailable",
            "too many connections, try again",
        )
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        // RFC 9110: a 405 must say which methods are allowed.
        let allow = if self.status == 405 {
            "Allow: GET\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{}",
            self.status,
            self.reason,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// Reads up to the blank line that ends the request head and returns the head without it.
/// A head longer than [`MAX_HEAD_LEN`] is an `InvalidData` error.
pub fn read_head(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the request head ended",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

/// Where the head ends: at the first empty line (`\r\n\r\n`, or `\n\n` from lenient clients).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// Routes a request head: `GET /` gets the message, `GET /healthz` gets "ok", `GET /count`
/// the number `count` gives (requests answered so far).
pub fn respond(head: &[u8], message: &str, count: impl FnOnce() -> u64) -> Response {
    let Ok(head) = std::str::from_utf8(head) else {
        return Response::bad_request();
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::bad_request();
    };
    if !version.starts_with("HTTP/1.") {
        return Response::bad_request();
    }
    // The query string does not take part in routing.
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    match (method, path) {
        ("GET", "/") => Response::new(200, "OK", message),
        ("GET", "/healthz") => Response::new(200, "OK", "ok"),
        ("GET", "/count") => Response::new(200, "OK", count().to_string()),
        ("GET", _) => Response::new(404, "Not Found", "not found"),
        _ => Response::new(405, "Method Not Allowed", "method not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> u16 {
        respond(head.as_bytes(), "hi", || 0).status
    }

    #[test]
    fn routes_requests() {
        assert_eq!(respond(b"GET / HTTP/1.1\r\nHost: x", "hi", || 0).body, "hi");
        assert_eq!(respond(b"GET /healthz HTTP/1.1", "hi", || 0).body, "ok");
        assert_eq!(respond(b"GET /count HTTP/1.1", "hi", || 42).body, "42");
        assert_eq!(status("POST /count HTTP/1.1"), 405);
        assert_eq!(status("GET /?a=b HTTP/1.0"), 200);
        assert_eq!(status("GET /nope HTTP/1.1"), 404);
        assert_eq!(status("POST / HTTP/1.1"), 405);
        assert_eq!(status("GET / HTTP/2"), 400);
        assert_eq!(status("GET /"), 400);
        assert_eq!(status(""), 400);
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\xff", "hi", || 0).status, 400);
    }

    #[test]
    fn response_has_length_and_closes() {
        let bytes = Response::new(200, "OK", "héllo").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Length: 6\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nhéllo"));
        assert!(!text.contains("Allow:"));
        let not_allowed =
            String::from_utf8(respond(b"PUT / HTTP/1.1", "", || 0).to_bytes()).unwrap();
        assert!(not_allowed.contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn reads_head_in_pieces() {
        // A reader that hands out a few bytes at a time, like a slow client.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let head = read_head(&mut Trickle(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody")).unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a");
        let head = read_head(&mut Trickle(b"GET / HTTP/1.0\n\n")).unwrap();
        assert_eq!(head, b"GET / HTTP/1.0");
        let eof = read_head(&mut Trickle(b"GET / HTTP/1.1\r\n")).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
        let huge = vec![b'a'; MAX_HEAD_LEN + 10];
        let too_big = read_head(&mut huge.as_slice()).unwrap_err();
        assert_eq!(too_big.kind(), io::ErrorKind::InvalidData);
    }
}
