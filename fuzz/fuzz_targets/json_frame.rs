//! The `tern.v1.json` decoders (client frames, and server frames as SDKs and
//! loadgen read them), on arbitrary bytes.
//!
//! Asserts: no panic; a decoded client frame is within the protocol's
//! limits, and re-encodes (JSON and rkyv) to bytes that decode to the same
//! frame; a refusal has a message and a `cmid` only for a `send`; a decoded
//! server frame round-trips too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{check_client_decode, check_server_round_trip};
use tern_proto::codec::{decode_client, decode_server};
use tern_proto::Subprotocol::Json;

fuzz_target!(|data: &[u8]| {
    check_client_decode(&decode_client(Json, data));
    if let Ok(f) = decode_server(Json, data) {
        check_server_round_trip(&f);
    }
});
