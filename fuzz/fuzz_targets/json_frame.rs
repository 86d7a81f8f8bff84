//! The `tern.v1.json` decoders (client frames, and server frames as SDKs and
//! loadgen read them), on arbitrary bytes.
//!
//! Asserts: no panic; a decoded client frame is within the protocol's
//! limits, and re-encodes (JSON and rkyv) to bytes that decode to the same
//! frame; a refusal has a message and a `cmid` only for a `send`; a decoded
//! server frame round-trips too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::check_client_frame_limits;
use tern_proto::codec::{decode_client, decode_server, encode_client, encode_server};
use tern_proto::Subprotocol::{Json, Rkyv};

fuzz_target!(|data: &[u8]| {
    match decode_client(Json, data) {
        Ok(f) => {
            check_client_frame_limits(&f);
            for sp in [Json, Rkyv] {
                let bytes = encode_client(sp, &f);
                assert_eq!(
                    decode_client(sp, &bytes).as_ref(),
                    Ok(&f),
                    "{sp:?} round trip"
                );
            }
        }
        Err(e) => {
            assert!(!e.message().is_empty());
            assert!(
                e.message().len() <= tern_fuzz::ERROR_MESSAGE_BYTES_MAX,
                "{}",
                e.message()
            );
        }
    }
    if let Ok(f) = decode_server(Json, data) {
        for sp in [Json, Rkyv] {
            let bytes = encode_server(sp, &f);
            assert_eq!(
                decode_server(sp, &bytes).as_ref(),
                Ok(&f),
                "{sp:?} round trip"
            );
        }
    }
});
