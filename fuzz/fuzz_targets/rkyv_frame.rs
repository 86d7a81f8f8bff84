//! The `tern.v1.rkyv` decoders (bytecheck validation, then the protocol's
//! limits) and stored entries, on arbitrary bytes at two alignments.
//!
//! Asserts: no panic; the result does not depend on the input's alignment;
//! a decoded client frame is within the protocol's limits and round-trips
//! through both encodings; a decoded server frame or entry round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{check_client_decode, check_server_round_trip};
use tern_proto::codec::{decode_client, decode_server};
use tern_proto::Entry;
use tern_proto::Subprotocol::Rkyv;

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
    check_client_decode(&client);

    let server = decode_server(Rkyv, data);
    assert_eq!(
        server,
        decode_server(Rkyv, odd),
        "server decode depends on alignment"
    );
    if let Ok(f) = server {
        check_server_round_trip(&f);
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
