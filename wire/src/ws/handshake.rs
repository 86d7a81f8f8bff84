//! RFC 6455 opening handshake (section 4.2): parse the client's HTTP/1.1
//! Upgrade request and write the 101 answer or an HTTP error.
//!
//! Decisions:
//! - Pure functions over bytes: the shard reads, calls [`parse_request`]
//!   until it stops saying "need more", writes the answer. Incomplete input
//!   is `Ok(None)`, not an error.
//! - The request is bounded by [`HANDSHAKE_BYTES_MAX`] and
//!   [`HANDSHAKE_HEADERS_MAX`]; beyond either → 431, so a slow or hostile
//!   client cannot make the shard buffer an unbounded header.
//! - Checks in the order a client author would debug them: path (404),
//!   method (405), HTTP version and required headers (400), WebSocket version
//!   (426 with `Sec-WebSocket-Version: 13`).
//! - A request body is refused (400): a GET upgrade has none, and bytes after
//!   the request are WebSocket frames, so a body would desynchronise them.
//! - Subprotocol: the first name offered (across all
//!   `Sec-WebSocket-Protocol` lines, in order) that Tern knows is selected
//!   and echoed; with none known, JSON and no echo (PROTOCOL.md).
//! - `Origin` is not checked: clients authenticate with a token in the first
//!   frame, not with cookies, so cross-origin pages gain nothing.

use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::Subprotocol;

/// Largest opening handshake we buffer. Browsers send under 2 KiB; 8 KiB is
/// the classic HTTP server default and bounds per-connection memory during
/// the handshake.
pub const HANDSHAKE_BYTES_MAX: usize = 8 * 1024;

/// Most header lines in a handshake. Browsers send about 15; the array lives
/// on the stack while parsing.
pub const HANDSHAKE_HEADERS_MAX: usize = 64;

/// The GUID appended to the client's key (RFC 6455 1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only WebSocket protocol version (RFC 6455 4.1).
const WS_VERSION: &str = "13";

/// The decoded `Sec-WebSocket-Key` is a 16-byte nonce (RFC 6455 4.1).
const WS_KEY_NONCE_LEN: usize = 16;

/// The path of the WebSocket endpoint (PROTOCOL.md).
const WS_PATH: &str = "/ws";

/// A valid opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The subprotocol the connection speaks.
    pub subprotocol: Subprotocol,
    /// Whether to put `Sec-WebSocket-Protocol` in the answer: only when the
    /// client offered a name Tern knows.
    pub echo_subprotocol: bool,
    /// The client's `Sec-WebSocket-Key`, trimmed, for [`accept_response`].
    pub key: String,
}

/// Why a handshake was refused; [`error_response`] writes the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The path is not `/ws` (a query string is allowed): 404.
    #[error("not found")]
    NotFound,
    /// Malformed request or a required header missing or wrong: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `Sec-WebSocket-Version` missing or not 13: 426.
    #[error("upgrade required: WebSocket version 13")]
    UpgradeRequired,
    /// Request over [`HANDSHAKE_BYTES_MAX`] or [`HANDSHAKE_HEADERS_MAX`]: 431.
    #[error("request header fields too large")]
    TooLarge,
    /// Method other than GET: 405.
    #[error("method not allowed")]
    MethodNotAllowed,
}

/// Parse an opening handshake at the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((hs, consumed)))`: a complete,
/// valid request of `consumed` bytes; bytes after it belong to the WebSocket
/// stream.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Handshake, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(HANDSHAKE_BYTES_MAX)];
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= HANDSHAKE_BYTES_MAX => {
            return Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(_) => return Err(HandshakeError::BadRequest("malformed HTTP request")),
    };

    // httparse fills path, method and version on Complete.
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _query)| p);
    if path != WS_PATH {
        return Err(HandshakeError::NotFound);
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::BadRequest("HTTP/1.1 required"));
    }

    let mut has_host = false;
    let mut upgrade_ok = false;
    let mut connection_ok = false;
    let mut version: Option<&[u8]> = None;
    let mut key: Option<&str> = None;
    let mut subprotocol: Option<Subprotocol> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            has_host = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_ok |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            if version.is_some() {
                return Err(HandshakeError::UpgradeRequired);
            }
            version = Some(h.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(HandshakeError::BadRequest(
                    "more than one Sec-WebSocket-Key",
                ));
            }
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HandshakeError::BadRequest("invalid Sec-WebSocket-Key"))?;
            key = Some(value.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            if subprotocol.is_none() {
                subprotocol = first_known_subprotocol(h.value);
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Err(HandshakeError::BadRequest("request body not allowed"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HandshakeError::BadRequest("request body not allowed"));
        }
    }
    if !has_host {
        return Err(HandshakeError::BadRequest("missing Host"));
    }
    if !upgrade_ok {
        return Err(HandshakeError::BadRequest("missing Upgrade: websocket"));
    }
    if !connection_ok {
        return Err(HandshakeError::BadRequest("missing Connection: Upgrade"));
    }
    if version.map(<[u8]>::trim_ascii) != Some(WS_VERSION.as_bytes()) {
        return Err(HandshakeError::UpgradeRequired);
    }
    let Some(key) = key else {
        return Err(HandshakeError::BadRequest("missing Sec-WebSocket-Key"));
    };
    if !is_valid_key(key) {
        return Err(HandshakeError::BadRequest("invalid Sec-WebSocket-Key"));
    }
    let hs = Handshake {
        subprotocol: subprotocol.unwrap_or(Subprotocol::Json),
        echo_subprotocol: subprotocol.is_some(),
        key: key.to_owned(),
    };
    Ok(Some((hs, consumed)))
}

/// Whether a comma-separated header value contains `token` (ASCII
/// case-insensitive, surrounding whitespace ignored).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The first name in a comma list that Tern knows (names are case-sensitive,
/// RFC 6455 11.5).
fn first_known_subprotocol(value: &[u8]) -> Option<Subprotocol> {
    value
        .split(|&b| b == b',')
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .find_map(Subprotocol::from_name)
}

/// A key is the base64 of a 16-byte nonce.
fn is_valid_key(key: &str) -> bool {
    // Decoding into a fixed array bounds the work; a longer key errors out.
    let mut nonce = [0u8; WS_KEY_NONCE_LEN + 2];
    matches!(
        base64::engine::general_purpose::STANDARD.decode_slice(key, &mut nonce),
        Ok(WS_KEY_NONCE_LEN)
    )
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The `101 Switching Protocols` answer to a valid handshake.
pub fn accept_response(client_key: &str, hs: &Handshake) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(client_key)
    );
    if hs.echo_subprotocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(hs.subprotocol.name());
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The HTTP answer to a refused handshake; the shard closes the connection
/// after writing it.
pub fn error_response(err: &HandshakeError) -> Vec<u8> {
    let (status, extra, body): (&str, &str, &str) = match err {
        HandshakeError::NotFound => (
            "404 Not Found",
            "",
            "not found: the WebSocket endpoint is /ws",
        ),
        HandshakeError::BadRequest(why) => ("400 Bad Request", "", why),
        HandshakeError::UpgradeRequired => (
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "WebSocket version 13 required",
        ),
        HandshakeError::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request header fields too large",
        ),
        HandshakeError::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "method not allowed",
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\n\
         {extra}\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}\n",
        body.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
