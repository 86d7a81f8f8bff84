//! Tern's wire edge: the parts of a connection that see client bytes before
//! anything else does. Pure functions over byte slices, no I/O, no storage,
//! so they are cheap to fuzz (see `fuzz/`).
//!
//! # Layout
//! - [`ws`]: RFC 6455 handshake and frame codec.
//! - [`token`]: HMAC-SHA256 access tokens (mint, verify without storage).
//!
//! The engine re-exports both modules (`tern_engine::ws`,
//! `tern_engine::token`).

pub mod token;
pub mod ws;
