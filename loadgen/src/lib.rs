//! tern-loadgen: the load tool for Tern.
//!
//! It opens many WebSocket connections from many loopback source addresses
//! (so ephemeral ports do not cap the count), speaks `tern.v1.rkyv` or
//! `tern.v1.json`, drives one of four scenarios (`idle`, `dm`, `group`,
//! `http`) for a bounded time and count, checks that nothing acknowledged
//! was lost, duplicated or reordered, and reports latency percentiles
//! (hdrhistogram) and rates, for people on stdout and as JSON.
//!
//! # Layout
//! - `main.rs`: the command line; builds a [`plan::Plan`] after setup.
//! - [`setup`]: users, tokens and groups through the HTTP API (blocking,
//!   before any executor starts), over [`http`]'s small HTTP/1.1 client.
//! - [`run`]: the main thread: one glommio executor per core, phases,
//!   the progress line, the [`run::Report`].
//! - [`exec`]: one executor: connect pacing, a task per connection.
//! - [`conn`]: one connection: connect (bound to a source address, see
//!   [`net`]), handshake, auth, send/receive, close.
//! - [`httpload`]: the `http` scenario's senders.
//! - [`ws`]: RFC 6455 client side (handshake, masked frames, decoding).
//! - [`track`]: body markers, seq/dup/order checks, ack policy.
//! - [`stats`]: histograms and counters per executor, merged at the end.
//!
//! # Architecture invariants
//! - Loadgen shares no code with the server beyond the protocol types
//!   (`tern-proto`): its WebSocket and HTTP code are its own.
//! - Every run ends by itself: the sending phase is bounded by
//!   `--duration` and `--count`, every wait after it by `--drain`, every
//!   connection attempt by `--connect-timeout`.
//! - Only loopback targets unless `--allow-remote`.
//! - An executor's state is touched by its thread only; threads share only
//!   the atomics of [`plan::Control`].
#![warn(missing_docs)]

pub mod conn;
pub mod exec;
pub mod http;
pub mod httpload;
pub mod net;
pub mod plan;
pub mod ready;
pub mod run;
pub mod setup;
pub mod stats;
pub mod track;
pub mod ws;
