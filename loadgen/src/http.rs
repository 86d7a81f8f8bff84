//! A minimal HTTP/1.1 client for the business API: request encoding and
//! response parsing (pure, shared by the blocking setup client and the
//! asynchronous `http` scenario), and [`BlockingClient`], a keep-alive
//! client over `std::net::TcpStream` that can pipeline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response head we read; the gateway's are a few hundred bytes.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest response body we read (the API's bodies are small; history
/// pages are the largest, and loadgen does not read them).
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Socket timeout of the blocking client: setup fails rather than hangs.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per `read` call by the blocking client.
const READ_CHUNK: usize = 16 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server's answer is not HTTP/1.1 as we read it.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The server closed the connection before a whole response.
    #[error("connection closed by the server")]
    Closed,
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text, for error messages (cut to 300 bytes).
    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        s.chars().take(300).collect()
    }
}

/// Appends one request with a bearer key and, when given, a JSON body.
pub fn encode_request(
    method: &str,
    path: &str,
    host: &str,
    api_key: &str,
    body: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(160 + path.len());
    // Writing into a String cannot fail.
    let _ = write!(
        head,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n"
    );
    if let Some(b) = body {
        let _ = write!(
            head,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    } else if method != "GET" && method != "DELETE" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
}

/// Parses the response at the start of `buf`: `Ok(None)` while incomplete,
/// else the response and the bytes it took. Handles `Content-Length` and
/// `chunked` bodies; a response without either has an empty body (the API
/// never answers "read to close").
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, HttpError> {
    let Some(head_end) = crate::ws::find_head_end(buf) else {
        if buf.len() > HEAD_BYTES_MAX {
            return Err(HttpError::Malformed("head too long".into()));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed(format!("header line {line:?}")));
        };
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("content-length {value:?}")))?;
            if n > BODY_BYTES_MAX {
                return Err(HttpError::Malformed(format!("body of {n} bytes")));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body_start = head_end + 4;
    let rest = &buf[body_start..];
    // 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        return Ok(Some((
            Response {
                status,
                body: Vec::new(),
            },
            body_start,
        )));
    }
    if chunked {
        return Ok(
            parse_chunked(rest)?.map(|(body, used)| (Response { status, body }, body_start + used))
        );
    }
    let n = content_length.unwrap_or(0);
    if rest.len() < n {
        return Ok(None);
    }
    Ok(Some((
        Response {
            status,
            body: rest[..n].to_vec(),
        },
        body_start + n,
    )))
}

/// A chunked body at the start of `buf`: the body and the bytes it took.
fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol])
            .map_err(|_| HttpError::Malformed("chunk size".into()))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        if body.len() + size > BODY_BYTES_MAX {
            return Err(HttpError::Malformed("chunked body too large".into()));
        }
        at += eol + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// A keep-alive HTTP/1.1 client over a blocking socket, for setup.
pub struct BlockingClient {
    addr: SocketAddr,
    host: String,
    api_key: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// One request of a pipelined batch: method, path, JSON body.
pub type Request<'a> = (&'a str, String, Option<Vec<u8>>);

impl BlockingClient {
    /// A client for `addr` (connects on first use).
    pub fn new(addr: SocketAddr, api_key: &str) -> BlockingClient {
        BlockingClient {
            addr,
            host: addr.to_string(),
            api_key: api_key.to_owned(),
            stream: None,
            buf: Vec::new(),
        }
    }

    fn stream(&mut self) -> Result<&mut TcpStream, HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, BLOCKING_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(BLOCKING_TIMEOUT))?;
            s.set_write_timeout(Some(BLOCKING_TIMEOUT))?;
            self.buf.clear();
            self.stream = Some(s);
        }
        // Set just above.
        self.stream
            .as_mut()
            .ok_or_else(|| HttpError::Malformed("no stream".into()))
    }

    /// One request; retried once on a fresh connection if the kept-alive
    /// one was closed (every request loadgen sends is idempotent).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let reqs = [(method, path.to_owned(), body.map(<[u8]>::to_vec))];
        let mut out = self.pipeline(&reqs)?;
        out.pop()
            .ok_or_else(|| HttpError::Malformed("no response".into()))
    }

    /// Sends all requests back to back, then reads their responses in
    /// order (PROTOCOL: pipelined requests are answered in order). Retried
    /// once, whole, on a fresh connection when the old one was closed.
    pub fn pipeline(&mut self, reqs: &[Request<'_>]) -> Result<Vec<Response>, HttpError> {
        match self.pipeline_once(reqs) {
            Ok(r) => Ok(r),
            Err(HttpError::Closed | HttpError::Io(_)) => {
                self.stream = None;
                self.pipeline_once(reqs)
            }
            Err(e) => Err(e),
        }
    }

    fn pipeline_once(&mut self, reqs: &[Request<'_>]) -> Result<Vec<Response>, HttpError> {
        let mut out = Vec::with_capacity(256 * reqs.len());
        for (m, p, b) in reqs {
            encode_request(m, p, &self.host, &self.api_key, b.as_deref(), &mut out);
        }
        self.stream()?.write_all(&out)?;
        let mut responses = Vec::with_capacity(reqs.len());
        let mut chunk = vec![0u8; READ_CHUNK];
        while responses.len() < reqs.len() {
            if let Some((r, used)) = parse_response(&self.buf)? {
                self.buf.drain(..used);
                responses.push(r);
                continue;
            }
            let n = self.stream()?.read(&mut chunk)?;
            if n == 0 {
                self.stream = None;
                return Err(HttpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(responses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_pipelined() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let (r, used) = parse_response(two).unwrap().unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
        let (r, used2) = parse_response(&two[used..]).unwrap().unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(used + used2, two.len());
        assert_eq!(parse_response(&two[..used - 1]).unwrap(), None);
    }

    #[test]
    fn chunked() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT";
        let (resp, used) = parse_response(r).unwrap().unwrap();
        assert_eq!(resp.body, b"abcde");
        assert_eq!(&r[used..], b"NEXT");
        for cut in 0..used {
            assert!(parse_response(&r[..cut]).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn no_body_statuses_and_errors() {
        let (r, used) = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, used), (204, 27));
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn request_shape() {
        let mut out = Vec::new();
        encode_request("PUT", "/v1/users/a", "h:1", "k", Some(b"{}"), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("PUT /v1/users/a HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer k\r\n")
        );
        assert!(s.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
