//! Tern's wire protocol: identifiers, frame types and their two encodings.
//!
//! This crate is the contract of `PROTOCOL.md` in types. It knows nothing
//! about sockets, shards or storage; the engine, the gateway, the storage
//! layer and test clients all speak through it.
//!
//! # Layout
//! - [`ids`]: validated identifiers ([`UserId`], [`GroupId`], [`DeviceId`],
//!   [`Cmid`]), conversation ids ([`ConvId`]) and send targets ([`Target`]).
//! - [`kind`]: small closed vocabularies ([`Kind`], [`ErrorCode`]).
//! - [`body`]: [`RawJson`], a JSON value kept as its text so the server never
//!   re-encodes a message body.
//! - [`frames`]: client and server frames, timeline entries.
//! - [`codec`]: the `tern.v1.json` and `tern.v1.rkyv` encodings
//!   ([`decode_client`], [`encode_server`], ...).
//!
//! # Architecture invariants
//! - Frames carry ids as unvalidated `String`s: decoding checks shape and
//!   limits, the engine validates ids at its edge with the types in [`ids`].
//! - Every byte that comes from a client or from disk is validated before
//!   use (bytecheck for rkyv, a full parse for JSON); no decoder panics.
//! - A [`RawJson`] always holds exactly one valid JSON value.
#![warn(missing_docs)]

pub mod body;
pub mod codec;
pub mod frames;
pub mod ids;
pub mod kind;

pub use body::RawJson;
pub use codec::{
    decode_client, decode_server, encode_client, encode_client_into, encode_server,
    encode_server_into, DecodeError, Subprotocol, JSON_NAME, RKYV_NAME,
};
pub use frames::{
    ArchivedClientFrame, ArchivedConvSummary, ArchivedEntry, ArchivedEvent, ArchivedMsg,
    ArchivedServerFrame, ClientFrame, ConvSummary, Entry, Event, Msg, ServerFrame,
};
pub use ids::{Cmid, ConvId, DeviceId, GroupId, IdError, Target, UserId};
pub use kind::{ArchivedErrorCode, ArchivedKind, ErrorCode, Kind};

/// Longest user, group or device id and longest cmid, in bytes
/// (PROTOCOL: "1–64 bytes"). Bounds per-id memory and key sizes in storage.
pub const ID_BYTES_MAX: usize = 64;

/// Longest message body, as encoded JSON text (PROTOCOL: "at most 32 KiB
/// encoded"). Keeps one message well below the client frame limit (64 KiB).
pub const BODY_BYTES_MAX: usize = 32 * 1024;

/// Most entries one `sync` may ask for (PROTOCOL: "limit (≤ 500)"). Bounds the
/// work and the size of one `sync_result`.
pub const SYNC_LIMIT_MAX: u32 = 500;

/// Entries a `sync` gets when it names no `limit` (PROTOCOL: "default 100").
pub const SYNC_LIMIT_DEFAULT: u32 = 100;

const _: () = assert!(SYNC_LIMIT_DEFAULT >= 1 && SYNC_LIMIT_DEFAULT <= SYNC_LIMIT_MAX);
