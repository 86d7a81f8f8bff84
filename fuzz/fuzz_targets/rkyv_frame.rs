//! The `tern.v1.rkyv` decoders (bytecheck validation, then the protocol's
//! limits) and stored entries, on arbitrary bytes at two alignments.
//!
//! Asserts: no panic; the result does not depend on the input's alignment;
//! a decoded client frame is within the protocol's limits and round-trips
//! through both encodings; a decoded server frame or entry round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::check_client_frame_limits;
use tern_proto::codec::{decode_client, decode_server, encode_client, encode_server};
use tern_proto::Entry;
use tern_proto::Subprotocol::{Json, Rkyv};

fuzz_target!(|data: &[u8]| {
    // libFuzzer's buffer is aligned; decode a copy at an odd address too.
    let mut shifted = Vec::with_capacity(data.len() + 1);
    shifted.push(0);
    shifted.extend_from_slice(data);
    let odd = &shifted[1..];

    let client = decode_client(Rkyv, data);
    assert_eq!(
        client,
        decode_client(Rkyv, odd),
        "client decode depends on alignment"
    );
    match client {
        Ok(f) => {
            check_client_frame_limits(&f);
            for sp in [Rkyv, Json] {
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

    let server = decode_server(Rkyv, data);
    assert_eq!(
        server,
        decode_server(Rkyv, odd),
        "server decode depends on alignment"
    );
    if let Ok(f) = server {
        for sp in [Rkyv, Json] {
            let bytes = encode_server(sp, &f);
            assert_eq!(
                decode_server(sp, &bytes).as_ref(),
                Ok(&f),
                "{sp:?} round trip"
            );
        }
    }

    let entry = Entry::from_storage_bytes(data);
    assert_eq!(
        entry,
        Entry::from_storage_bytes(odd),
        "entry decode depends on alignment"
    );
    if let Ok(e) = entry {
        assert_eq!(
            Entry::from_storage_bytes(&e.to_storage_bytes()).as_ref(),
            Ok(&e)
        );
    }
});
