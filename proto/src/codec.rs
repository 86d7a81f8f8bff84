//! The two encodings of frames: `tern.v1.json` and `tern.v1.rkyv`.
//!
//! # JSON
//! One object per frame, tagged by `"type"`; field order is free and unknown
//! fields are ignored. Decoding makes a single pass into a flat struct whose
//! fields are all optional and loosely typed, then builds the variant named
//! by `type`, checking the type of each field it uses and reporting the
//! first missing or mistyped one by name. Bodies are captured as raw text,
//! never re-encoded.
//!
//! # rkyv
//! One rkyv 0.8 archive per frame (little-endian, 32-bit offsets, unaligned
//! primitives, so any byte offset works). Every archive is checked with
//! bytecheck before use, and body text must parse as JSON.
//!
//! Both decoders enforce the same limits ([`crate::BODY_BYTES_MAX`], `text`
//! bodies are strings, `sync.limit` in 1..=[`crate::SYNC_LIMIT_MAX`]) and
//! never panic on any input.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

// Decoding uses `BoxedError`, which keeps the reason for the message;
// `rancor::Error` drops it in release builds. Encoding uses the zero-size
// `Failure`: its errors are unreachable and discarded.
use rkyv::rancor;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::body::RawJson;
use crate::frames::{
    ArchivedClientFrame, ArchivedEntry, ArchivedServerFrame, ClientFrame, ConvSummary, Entry,
    Event, Msg, ServerFrame,
};
use crate::kind::{ErrorCode, Kind};
use crate::{BODY_BYTES_MAX, SYNC_LIMIT_MAX};

/// `Sec-WebSocket-Protocol` name of the JSON encoding.
pub const JSON_NAME: &str = "tern.v1.json";
/// `Sec-WebSocket-Protocol` name of the rkyv encoding.
pub const RKYV_NAME: &str = "tern.v1.rkyv";

/// Longest slice of client input echoed back in an error message, in bytes.
/// Enough to recognise a typo, small enough to keep error frames small.
const ECHO_BYTES_MAX: usize = 32;

/// The encoding a connection speaks, chosen at the WebSocket handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// `tern.v1.json`: text frames, one JSON object each. The default.
    #[default]
    Json,
    /// `tern.v1.rkyv`: binary frames, one rkyv archive each.
    Rkyv,
}

impl Subprotocol {
    /// `Sec-WebSocket-Protocol` name of the JSON encoding.
    pub const JSON_NAME: &'static str = JSON_NAME;
    /// `Sec-WebSocket-Protocol` name of the rkyv encoding.
    pub const RKYV_NAME: &'static str = RKYV_NAME;

    /// The `Sec-WebSocket-Protocol` name.
    pub fn name(self) -> &'static str {
        match self {
            Subprotocol::Json => JSON_NAME,
            Subprotocol::Rkyv => RKYV_NAME,
        }
    }

    /// The subprotocol with this name (case-sensitive, RFC 6455 §11.5).
    pub fn from_name(name: &str) -> Option<Subprotocol> {
        match name {
            JSON_NAME => Some(Subprotocol::Json),
            RKYV_NAME => Some(Subprotocol::Rkyv),
            _ => None,
        }
    }

    /// Whether frames are WebSocket text frames (else binary).
    pub fn is_text(self) -> bool {
        self == Subprotocol::Json
    }
}

impl fmt::Display for Subprotocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A frame that could not be decoded, or broke a limit of the protocol.
///
/// `Display` is a message for the client (sent in an `error` frame with
/// `bad_request`). When a `send` got far enough for its `cmid` to be known,
/// [`DecodeError::cmid`] returns it, so the engine can answer `send_err`
/// with [`DecodeError::code`] instead.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct DecodeError {
    message: String,
    too_large: bool,
    cmid: Option<String>,
}

impl DecodeError {
    fn bad(message: impl Into<String>) -> DecodeError {
        DecodeError {
            message: bounded_message(message.into()),
            too_large: false,
            cmid: None,
        }
    }

    fn with_cmid(mut self, cmid: &str) -> DecodeError {
        self.cmid = Some(cmid.to_owned());
        self
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether a body was beyond [`BODY_BYTES_MAX`] (answer `too_large`).
    pub fn is_too_large(&self) -> bool {
        self.too_large
    }

    /// The cmid of the refused `send`, when it was read before the error.
    pub fn cmid(&self) -> Option<&str> {
        self.cmid.as_deref()
    }

    /// The protocol code for this error: `too_large` or `bad_request`.
    pub fn code(&self) -> ErrorCode {
        if self.too_large {
            ErrorCode::TooLarge
        } else {
            ErrorCode::BadRequest
        }
    }
}

/// At most [`ECHO_BYTES_MAX`] bytes of `s`, cut at a char boundary.
fn clip(s: &str) -> &str {
    if s.len() <= ECHO_BYTES_MAX {
        return s;
    }
    let mut end = ECHO_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// Decodes one client frame and checks the protocol's limits. Ids are not
/// validated here.
pub fn decode_client(sp: Subprotocol, payload: &[u8]) -> Result<ClientFrame, DecodeError> {
    // Both decoders end in `check_client`.
    match sp {
        Subprotocol::Json => decode_client_json(payload),
        Subprotocol::Rkyv => decode_client_rkyv(payload),
    }
}

/// Encodes a server frame.
pub fn encode_server(sp: Subprotocol, f: &ServerFrame) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_server_into(sp, f, &mut out);
    out
}

/// Appends the encoding of a server frame to `out` (existing bytes stay).
pub fn encode_server_into(sp: Subprotocol, f: &ServerFrame, out: &mut Vec<u8>) {
    let start = out.len();
    if encode_server_fallible(sp, f, out).is_err() {
        // Unreachable for frames within the protocol's bounds (server
        // frames are at most 16 MiB, rkyv offsets reach 2 GiB, and every
        // `Serialize` impl here is infallible). Send a well-formed error
        // rather than half a frame.
        out.truncate(start);
        let fallback = ServerFrame::Error {
            code: ErrorCode::Unavailable,
            message: "the server could not encode a frame".to_owned(),
        };
        if encode_server_fallible(sp, &fallback, out).is_err() {
            out.truncate(start);
        }
    }
}

fn encode_server_fallible(sp: Subprotocol, f: &ServerFrame, out: &mut Vec<u8>) -> Result<(), ()> {
    match sp {
        Subprotocol::Json => serde_json::to_writer(&mut *out, f).map_err(drop),
        Subprotocol::Rkyv => rkyv::api::high::to_bytes_in::<_, rancor::Failure>(f, &mut *out)
            .map(drop)
            .map_err(drop),
    }
}

/// Encodes a client frame (test clients, loadgen, SDKs).
pub fn encode_client(sp: Subprotocol, f: &ClientFrame) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_client_into(sp, f, &mut out);
    out
}

/// Appends the encoding of a client frame to `out`. On the (unreachable,
/// see [`encode_server_into`]) encoding failure nothing is appended.
pub fn encode_client_into(sp: Subprotocol, f: &ClientFrame, out: &mut Vec<u8>) {
    let start = out.len();
    let res = match sp {
        Subprotocol::Json => serde_json::to_writer(&mut *out, f).map_err(drop),
        Subprotocol::Rkyv => rkyv::api::high::to_bytes_in::<_, rancor::Failure>(f, &mut *out)
            .map(drop)
            .map_err(drop),
    };
    if res.is_err() {
        out.truncate(start);
    }
}

/// Decodes one server frame (test clients, loadgen, SDKs). Every body is
/// checked to be JSON; no other limit applies.
pub fn decode_server(sp: Subprotocol, payload: &[u8]) -> Result<ServerFrame, DecodeError> {
    match sp {
        Subprotocol::Json => {
            let mut de = serde_json::Deserializer::from_slice(payload);
            match ServerFrame::deserialize(&mut de).and_then(|f| de.end().map(|()| f)) {
                Ok(f) => Ok(f),
                Err(e) => Err(json_error(e)),
            }
        }
        Subprotocol::Rkyv => decode_server_rkyv(payload),
    }
}

fn decode_server_rkyv(payload: &[u8]) -> Result<ServerFrame, DecodeError> {
    let archived = rkyv::access::<ArchivedServerFrame, rancor::BoxedError>(payload)
        .map_err(|e| rkyv_error("invalid rkyv frame", &e))?;
    // rkyv 0.8 leaks a `Vec`'s buffer (and the elements already built) when
    // one of its elements fails to deserialize. After bytecheck the only
    // element that can fail is an entry whose body is not JSON, so those are
    // checked first and deserialization cannot fail inside the `Vec`.
    // Found by the `rkyv_frame` fuzz target (LeakSanitizer).
    if let ArchivedServerFrame::SyncResult { messages, .. } = archived {
        for entry in messages.iter() {
            let body = match entry {
                ArchivedEntry::Msg(m) => &m.body,
                ArchivedEntry::Event(e) => &e.data,
            };
            if let Err(e) = RawJson::from_text(body.as_str()) {
                return Err(DecodeError::bad(format!(
                    "invalid rkyv frame: body is not valid JSON: {e}"
                )));
            }
        }
    }
    rkyv::deserialize::<ServerFrame, rancor::BoxedError>(archived)
        .map_err(|e| rkyv_error("invalid rkyv frame", &e))
}

impl Entry {
    /// The entry as stored: an rkyv archive (the same layout as in a
    /// `tern.v1.rkyv` frame).
    pub fn to_storage_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        // Unreachable failure: an entry is bounded by the body limit, far
        // below rkyv's 2 GiB offsets. An empty value fails
        // `from_storage_bytes` loudly instead of being half-read.
        let _ = self.append_storage_bytes(&mut out);
        out
    }

    /// Appends [`Entry::to_storage_bytes`] to `out` (after a header, say),
    /// byte for byte the same as long as `out.len()` is a multiple of 8:
    /// the archive's padding depends on its start modulo its alignment.
    /// On the (unreachable) failure nothing is appended and it is `false`.
    pub fn append_storage_bytes(&self, out: &mut Vec<u8>) -> bool {
        debug_assert_eq!(out.len() % 8, 0, "unaligned start");
        let start = out.len();
        let ok = rkyv::api::high::to_bytes_in::<_, rancor::Failure>(self, &mut *out).is_ok();
        if !ok {
            out.truncate(start);
        }
        ok
    }

    /// Reads a stored entry. The bytes are checked (bytecheck, JSON bodies),
    /// never trusted; any byte alignment works.
    pub fn from_storage_bytes(b: &[u8]) -> Result<Entry, DecodeError> {
        rkyv::from_bytes::<Entry, rancor::BoxedError>(b)
            .map_err(|e| rkyv_error("corrupt stored entry", &e))
    }
}

// ---------------------------------------------------------------------------
// Limits shared by both encodings
// ---------------------------------------------------------------------------

/// The checks that apply whatever the encoding.
fn check_client(f: &ClientFrame) -> Result<(), DecodeError> {
    match f {
        ClientFrame::Send {
            cmid, kind, body, ..
        } => check_body(*kind, body).map_err(|e| e.with_cmid(cmid)),
        ClientFrame::Sync {
            limit: Some(limit), ..
        } => check_limit(u64::from(*limit)).map(drop),
        _ => Ok(()),
    }
}

fn check_body(kind: Kind, body: &RawJson) -> Result<(), DecodeError> {
    check_body_len(body.len())?;
    if kind == Kind::Text && !body.is_string() {
        return Err(DecodeError::bad(
            "body of a text message must be a JSON string",
        ));
    }
    Ok(())
}

fn check_body_len(len: usize) -> Result<(), DecodeError> {
    if len > BODY_BYTES_MAX {
        return Err(DecodeError {
            message: format!("body is {len} bytes of JSON, at most {BODY_BYTES_MAX} are allowed"),
            too_large: true,
            cmid: None,
        });
    }
    Ok(())
}

fn check_limit(limit: u64) -> Result<u32, DecodeError> {
    match u32::try_from(limit) {
        Ok(l) if (1..=SYNC_LIMIT_MAX).contains(&l) => Ok(l),
        _ => Err(DecodeError::bad(format!(
            "`limit` in sync must be 1..={SYNC_LIMIT_MAX}, got {limit}"
        ))),
    }
}

// ---------------------------------------------------------------------------
// rkyv
// ---------------------------------------------------------------------------

/// A decode error for an rkyv validation failure, safe to send to a client.
///
/// bytecheck's messages name the memory addresses of the buffer they checked
/// ("subtree pointer overran range: ptr 0x00007b5c985e0030 ..."); sent as is
/// they would tell any client where the server's heap is (defeating ASLR)
/// and make the message depend on where the frame landed. Every hex literal
/// is replaced by `0x_`; the rest of the message (what failed and where in
/// the frame's structure) stays, since it is what a client author needs.
/// Found by the `rkyv_frame` fuzz target.
fn rkyv_error(context: &str, e: &impl fmt::Display) -> DecodeError {
    DecodeError::bad(format!("{context}: {}", redact_hex(&e.to_string())))
}

/// `s` with every `0x`-prefixed hex number replaced by `0x_`.
fn redact_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i + 2]);
        let digits = rest[i + 2..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        if digits > 0 {
            out.push('_');
        }
        rest = &rest[i + 2 + digits..];
    }
    out.push_str(rest);
    out
}

fn decode_client_rkyv(payload: &[u8]) -> Result<ClientFrame, DecodeError> {
    let archived = rkyv::access::<ArchivedClientFrame, rancor::BoxedError>(payload)
        .map_err(|e| rkyv_error("invalid rkyv frame", &e))?;
    if let ArchivedClientFrame::Send {
        cmid,
        to,
        kind,
        body,
    } = archived
    {
        // Built by hand so that the body is parsed once and its errors
        // carry the cmid.
        let cmid = cmid.as_str();
        check_body_len(body.len()).map_err(|e| e.with_cmid(cmid))?;
        let body = RawJson::from_text(body.as_str()).map_err(|e| {
            DecodeError::bad(format!("body is not valid JSON: {e}")).with_cmid(cmid)
        })?;
        let kind = rkyv::deserialize::<Kind, rancor::BoxedError>(kind)
            .map_err(|e| rkyv_error("invalid rkyv frame", &e))?;
        let frame = ClientFrame::Send {
            cmid: cmid.to_owned(),
            to: to.as_str().to_owned(),
            kind,
            body,
        };
        check_client(&frame)?;
        return Ok(frame);
    }
    let frame = rkyv::deserialize::<ClientFrame, rancor::BoxedError>(archived)
        .map_err(|e| rkyv_error("invalid rkyv frame", &e))?;
    check_client(&frame)?;
    Ok(frame)
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

fn decode_client_json(payload: &[u8]) -> Result<ClientFrame, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    match MapOnly::<FlatClient>::deserialize(&mut de).and_then(|f| de.end().map(|()| f)) {
        Ok(MapOnly(flat)) => flat.build(),
        Err(e) => Err(json_error(e)),
    }
}

/// A client message for a serde_json error.
/// Longest error message sent back to a client. serde's texts quote the
/// offending value whole (a 64 KiB string field would come back in full):
/// the error frame must not echo client input without a bound.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;

/// `message` cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes on a char boundary,
/// marked with an ellipsis when cut.
fn bounded_message(mut message: String) -> String {
    const MARK: &str = "…";
    if message.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut cut = ERROR_MESSAGE_BYTES_MAX - MARK.len();
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(MARK);
    }
    debug_assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX);
    message
}

fn json_error(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            DecodeError::bad(format!("malformed JSON: {e}"))
        }
        Category::Data => DecodeError::bad(format!("invalid frame: {e}")),
    }
}

/// Deserializes `T` only from a map (a JSON object): a derived struct would
/// also accept a JSON array of its fields in order, which frames are not.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MapOnly<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `Some(body)` for any present value, `null` included; a missing field
/// stays `None` through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawJson>, D::Error> {
    RawJson::deserialize(d).map(Some)
}

/// A field value of any JSON type, read without failing the frame.
///
/// Unknown fields are ignored, and a field of one frame type is unknown to
/// the others, so `{"type":"ping","seq":"x"}` must decode. The flat structs
/// therefore take every scalar field as a `Scalar` and check its type only
/// when the frame type uses it. A JSON `null` reads as a missing field.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Bool(bool),
    /// Any other type, described for the error message.
    Other(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar<'de>, E> {
                Ok(match u64::try_from(n) {
                    Ok(n) => Scalar::U64(n),
                    Err(_) => Scalar::Other("a negative number"),
                })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other("a fraction or a number beyond 64 bits"))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::U64(_) => "a number",
            Scalar::Bool(_) => "a boolean",
            Scalar::Other(what) => what,
        }
    }
}

/// Reads the fields of one frame type, naming it in every error.
struct Fields<'t> {
    ty: &'t str,
}

impl Fields<'_> {
    fn missing(&self, field: &str) -> DecodeError {
        DecodeError::bad(format!("missing field `{field}` in {}", self.ty))
    }

    fn wrong(&self, field: &str, want: &str, got: &Scalar<'_>) -> DecodeError {
        DecodeError::bad(format!(
            "`{field}` in {} must be {want}, got {}",
            self.ty,
            got.describe()
        ))
    }

    fn string(&self, v: Option<Scalar<'_>>, field: &str) -> Result<String, DecodeError> {
        match v {
            Some(Scalar::Str(s)) => Ok(s.into_owned()),
            Some(other) => Err(self.wrong(field, "a string", &other)),
            None => Err(self.missing(field)),
        }
    }

    fn opt_u64(&self, v: Option<Scalar<'_>>, field: &str) -> Result<Option<u64>, DecodeError> {
        match v {
            Some(Scalar::U64(n)) => Ok(Some(n)),
            Some(other) => Err(self.wrong(field, "an unsigned integer", &other)),
            None => Ok(None),
        }
    }

    fn u64(&self, v: Option<Scalar<'_>>, field: &str) -> Result<u64, DecodeError> {
        self.opt_u64(v, field)?.ok_or_else(|| self.missing(field))
    }

    fn u16(&self, v: Option<Scalar<'_>>, field: &str) -> Result<u16, DecodeError> {
        let n = self.u64(v, field)?;
        u16::try_from(n).map_err(|_| {
            DecodeError::bad(format!(
                "`{field}` in {} must be 0..=65535, got {n}",
                self.ty
            ))
        })
    }

    fn bool(&self, v: Option<Scalar<'_>>, field: &str) -> Result<bool, DecodeError> {
        match v {
            Some(Scalar::Bool(b)) => Ok(b),
            Some(other) => Err(self.wrong(field, "a boolean", &other)),
            None => Err(self.missing(field)),
        }
    }

    fn kind(&self, v: Option<Scalar<'_>>) -> Result<Kind, DecodeError> {
        match v {
            Some(Scalar::Str(s)) => Kind::parse(&s).ok_or_else(|| {
                DecodeError::bad(format!(
                    "unknown kind `{}` in {}; expected text, image, file, voice or custom",
                    clip(&s),
                    self.ty
                ))
            }),
            Some(other) => Err(self.wrong("kind", "a string", &other)),
            None => Err(self.missing("kind")),
        }
    }

    fn error_code(&self, v: Option<Scalar<'_>>) -> Result<ErrorCode, DecodeError> {
        match v {
            Some(Scalar::Str(s)) => ErrorCode::parse(&s).ok_or_else(|| {
                DecodeError::bad(format!("unknown error code `{}` in {}", clip(&s), self.ty))
            }),
            Some(other) => Err(self.wrong("code", "a string", &other)),
            None => Err(self.missing("code")),
        }
    }

    fn raw(&self, v: Option<RawJson>, field: &str) -> Result<RawJson, DecodeError> {
        v.ok_or_else(|| self.missing(field))
    }

    fn required<T>(&self, v: Option<T>, field: &str) -> Result<T, DecodeError> {
        v.ok_or_else(|| self.missing(field))
    }
}

/// The frame's `type`, borrowed from the input when it has no escapes.
fn frame_type<'a>(v: Option<Scalar<'a>>) -> Result<Cow<'a, str>, DecodeError> {
    match v {
        Some(Scalar::Str(s)) => Ok(s),
        Some(other) => Err(DecodeError::bad(format!(
            "`type` must be a string, got {}",
            other.describe()
        ))),
        None => Err(DecodeError::bad("missing field `type`")),
    }
}

/// Every field any client frame has, all optional.
#[derive(Deserialize)]
struct FlatClient<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Scalar<'a>>,
    #[serde(borrow)]
    token: Option<Scalar<'a>>,
    #[serde(borrow)]
    device: Option<Scalar<'a>>,
    #[serde(borrow)]
    cmid: Option<Scalar<'a>>,
    #[serde(borrow)]
    to: Option<Scalar<'a>>,
    #[serde(borrow)]
    kind: Option<Scalar<'a>>,
    #[serde(default, deserialize_with = "present")]
    body: Option<RawJson>,
    #[serde(borrow)]
    conv: Option<Scalar<'a>>,
    #[serde(borrow)]
    seq: Option<Scalar<'a>>,
    #[serde(borrow)]
    after: Option<Scalar<'a>>,
    #[serde(borrow)]
    limit: Option<Scalar<'a>>,
}

impl FlatClient<'_> {
    fn build(self) -> Result<ClientFrame, DecodeError> {
        let ty = frame_type(self.ty)?;
        let f = Fields { ty: &ty };
        let frame = match &*ty {
            "auth" => ClientFrame::Auth {
                token: f.string(self.token, "token")?,
                device: f.string(self.device, "device")?,
            },
            "send" => {
                let cmid = f.string(self.cmid, "cmid")?;
                // Later errors carry the cmid so the engine can answer send_err.
                let with = |e: DecodeError| e.with_cmid(&cmid);
                let to = f.string(self.to, "to").map_err(with)?;
                let kind = f.kind(self.kind).map_err(with)?;
                let body = f.raw(self.body, "body").map_err(with)?;
                ClientFrame::Send {
                    cmid,
                    to,
                    kind,
                    body,
                }
            }
            "ack" => ClientFrame::Ack {
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
            },
            "read" => ClientFrame::Read {
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
            },
            "sync" => ClientFrame::Sync {
                conv: f.string(self.conv, "conv")?,
                after: f.opt_u64(self.after, "after")?.unwrap_or(0),
                limit: f
                    .opt_u64(self.limit, "limit")?
                    .map(check_limit)
                    .transpose()?,
            },
            "convs" => ClientFrame::Convs,
            "typing" => ClientFrame::Typing {
                to: f.string(self.to, "to")?,
            },
            "ping" => ClientFrame::Ping,
            other => {
                return Err(DecodeError::bad(format!(
                    "unknown frame type `{}`",
                    clip(other)
                )))
            }
        };
        check_client(&frame)?;
        Ok(frame)
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOnly(flat) = MapOnly::<FlatClient<'de>>::deserialize(d)?;
        flat.build().map_err(de::Error::custom)
    }
}

/// Every field any server frame has, all optional.
#[derive(Deserialize)]
struct FlatServer<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Scalar<'a>>,
    #[serde(borrow)]
    user: Option<Scalar<'a>>,
    #[serde(borrow)]
    device: Option<Scalar<'a>>,
    #[serde(borrow)]
    heartbeat_ms: Option<Scalar<'a>>,
    #[serde(borrow)]
    ack_timeout_ms: Option<Scalar<'a>>,
    #[serde(borrow)]
    ts: Option<Scalar<'a>>,
    #[serde(borrow)]
    cmid: Option<Scalar<'a>>,
    #[serde(borrow)]
    conv: Option<Scalar<'a>>,
    #[serde(borrow)]
    seq: Option<Scalar<'a>>,
    #[serde(borrow)]
    code: Option<Scalar<'a>>,
    #[serde(borrow)]
    message: Option<Scalar<'a>>,
    #[serde(borrow)]
    from: Option<Scalar<'a>>,
    #[serde(borrow)]
    kind: Option<Scalar<'a>>,
    #[serde(default, deserialize_with = "present")]
    body: Option<RawJson>,
    #[serde(default, deserialize_with = "present")]
    data: Option<RawJson>,
    #[serde(borrow)]
    read_seq: Option<Scalar<'a>>,
    #[serde(borrow)]
    max_seq: Option<Scalar<'a>>,
    #[serde(borrow)]
    reason: Option<Scalar<'a>>,
    #[serde(borrow)]
    has_more: Option<Scalar<'a>>,
    // Named by one frame type each, so typed directly.
    messages: Option<Vec<Entry>>,
    convs: Option<Vec<ConvSummary>>,
}

impl FlatServer<'_> {
    fn build(self) -> Result<ServerFrame, DecodeError> {
        let ty = frame_type(self.ty)?;
        let f = Fields { ty: &ty };
        let frame = match &*ty {
            "auth_ok" => ServerFrame::AuthOk {
                user: f.string(self.user, "user")?,
                device: f.string(self.device, "device")?,
                heartbeat_ms: f.u64(self.heartbeat_ms, "heartbeat_ms")?,
                ack_timeout_ms: f.u64(self.ack_timeout_ms, "ack_timeout_ms")?,
                ts: f.u64(self.ts, "ts")?,
            },
            "send_ack" => ServerFrame::SendAck {
                cmid: f.string(self.cmid, "cmid")?,
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
                ts: f.u64(self.ts, "ts")?,
            },
            "send_err" => ServerFrame::SendErr {
                cmid: f.string(self.cmid, "cmid")?,
                code: f.error_code(self.code)?,
                message: f.string(self.message, "message")?,
            },
            "msg" => ServerFrame::Msg(Msg {
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
                from: f.string(self.from, "from")?,
                device: f.string(self.device, "device")?,
                cmid: f.string(self.cmid, "cmid")?,
                kind: f.kind(self.kind)?,
                body: f.raw(self.body, "body")?,
                ts: f.u64(self.ts, "ts")?,
            }),
            "event" => ServerFrame::Event(Event {
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
                code: f.u16(self.code, "code")?,
                data: f.raw(self.data, "data")?,
                ts: f.u64(self.ts, "ts")?,
            }),
            "receipt" => ServerFrame::Receipt {
                conv: f.string(self.conv, "conv")?,
                user: f.string(self.user, "user")?,
                read_seq: f.u64(self.read_seq, "read_seq")?,
            },
            "typing" => ServerFrame::Typing {
                conv: f.string(self.conv, "conv")?,
                user: f.string(self.user, "user")?,
            },
            "notice" => ServerFrame::Notice {
                conv: f.string(self.conv, "conv")?,
                max_seq: f.u64(self.max_seq, "max_seq")?,
            },
            "kicked" => ServerFrame::Kicked {
                reason: f.string(self.reason, "reason")?,
            },
            "pong" => ServerFrame::Pong {
                ts: f.u64(self.ts, "ts")?,
            },
            "sync_result" => ServerFrame::SyncResult {
                conv: f.string(self.conv, "conv")?,
                messages: f.required(self.messages, "messages")?,
                has_more: f.bool(self.has_more, "has_more")?,
            },
            "convs_result" => ServerFrame::ConvsResult {
                convs: f.required(self.convs, "convs")?,
            },
            "error" => ServerFrame::Error {
                code: f.error_code(self.code)?,
                message: f.string(self.message, "message")?,
            },
            other => {
                return Err(DecodeError::bad(format!(
                    "unknown frame type `{}`",
                    clip(other)
                )))
            }
        };
        Ok(frame)
    }
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOnly(flat) = MapOnly::<FlatServer<'de>>::deserialize(d)?;
        flat.build().map_err(de::Error::custom)
    }
}

/// Every field a timeline entry has, all optional.
#[derive(Deserialize)]
struct FlatEntry<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Scalar<'a>>,
    #[serde(borrow)]
    conv: Option<Scalar<'a>>,
    #[serde(borrow)]
    seq: Option<Scalar<'a>>,
    #[serde(borrow)]
    from: Option<Scalar<'a>>,
    #[serde(borrow)]
    device: Option<Scalar<'a>>,
    #[serde(borrow)]
    cmid: Option<Scalar<'a>>,
    #[serde(borrow)]
    kind: Option<Scalar<'a>>,
    #[serde(default, deserialize_with = "present")]
    body: Option<RawJson>,
    #[serde(borrow)]
    code: Option<Scalar<'a>>,
    #[serde(default, deserialize_with = "present")]
    data: Option<RawJson>,
    #[serde(borrow)]
    ts: Option<Scalar<'a>>,
}

impl FlatEntry<'_> {
    fn build(self) -> Result<Entry, DecodeError> {
        let ty = frame_type(self.ty)?;
        let f = Fields { ty: &ty };
        let entry = match &*ty {
            "msg" => Entry::Msg(Msg {
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
                from: f.string(self.from, "from")?,
                device: f.string(self.device, "device")?,
                cmid: f.string(self.cmid, "cmid")?,
                kind: f.kind(self.kind)?,
                body: f.raw(self.body, "body")?,
                ts: f.u64(self.ts, "ts")?,
            }),
            "event" => Entry::Event(Event {
                conv: f.string(self.conv, "conv")?,
                seq: f.u64(self.seq, "seq")?,
                code: f.u16(self.code, "code")?,
                data: f.raw(self.data, "data")?,
                ts: f.u64(self.ts, "ts")?,
            }),
            other => {
                return Err(DecodeError::bad(format!(
                    "unknown entry type `{}`",
                    clip(other)
                )))
            }
        };
        Ok(entry)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOnly(flat) = MapOnly::<FlatEntry<'de>>::deserialize(d)?;
        flat.build().map_err(de::Error::custom)
    }
}
