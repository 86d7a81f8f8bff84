//! RFC 6455: handshake and frame codec. Pure functions over byte slices; the
//! shard does the I/O.
//!
//! # Layout
//! - [`handshake`]: parse the HTTP Upgrade request, answer 101 or an error.
//! - [`codec`]: check/parse client frames in place, reassemble messages,
//!   encode server frames.
//!
//! Architecture invariant: nothing here does I/O, allocates per idle
//! connection, or panics on client bytes.

pub mod codec;
pub mod handshake;

pub use codec::{
    check_client_frame, check_client_header, close_frame, encode_client_frame, encode_frame,
    frame_header, parse_client_frame, Assembler, FrameHeader, Message, OpCode, WsError,
    CONTROL_PAYLOAD_MAX,
};
pub use handshake::{
    accept_key, accept_response, error_response, parse_request, Handshake, HandshakeError,
    HANDSHAKE_BYTES_MAX,
};

/// The encoding a connection speaks, chosen by the handshake.
pub use tern_proto::Subprotocol;
