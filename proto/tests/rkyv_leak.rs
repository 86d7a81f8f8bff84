//! Regression, found by the `rkyv_frame` fuzz target (LeakSanitizer): an
//! rkyv `sync_result` whose second entry's body is not JSON leaked the
//! entries' `Vec` buffer on every decode (rkyv 0.8 does not free a `Vec`
//! whose element fails to deserialize). A client reading hostile frames
//! would grow without bound.
//!
//! Alone in its own test binary: the counting allocator sees every
//! allocation of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tern_proto::{
    decode_server, encode_server, Entry, Kind, Msg, RawJson, ServerFrame, Subprotocol,
};

/// Bytes allocated and not yet freed.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// How many decodes to run: a leak of one entries buffer (~270 bytes) each
/// adds up far past the slack below.
const ROUNDS: isize = 200;
/// Allowed drift in live bytes (lazily initialised statics, test harness).
const SLACK_BYTES: isize = 4096;

fn msg(body: &str) -> Entry {
    Entry::Msg(Msg {
        conv: "g:g1".into(),
        seq: 1,
        from: "alice".into(),
        device: "phone".into(),
        cmid: "c1".into(),
        kind: Kind::Custom,
        body: RawJson::from_text(body).unwrap(),
        ts: 1,
    })
}

#[test]
fn sync_result_with_a_bad_body_is_refused_without_leaking() {
    let frame = ServerFrame::SyncResult {
        conv: "g:g1".into(),
        messages: vec![msg("1"), msg("\"QQQQQQQQQQQQQQQQQQQQ\"")],
        has_more: false,
    };
    let mut bytes = encode_server(Subprotocol::Rkyv, &frame);
    // Break the second body's JSON without touching the archive's layout.
    let at = bytes
        .windows(2)
        .position(|w| w == b"\"Q")
        .expect("body text in the archive");
    bytes[at] = b'Q';

    let err = decode_server(Subprotocol::Rkyv, &bytes).unwrap_err();
    assert!(
        err.message().contains("not valid JSON"),
        "{}",
        err.message()
    );

    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..ROUNDS {
        assert!(decode_server(Subprotocol::Rkyv, &bytes).is_err());
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        grown < SLACK_BYTES,
        "{grown} bytes leaked over {ROUNDS} decodes"
    );
}
