//! Encoder/decoder pairs: every frame type through both encodings, storage
//! bytes, and hostile input for the rkyv decoders.

use proptest::collection::vec;
use proptest::prelude::*;
use tern_proto::{
    decode_client, decode_server, encode_client, encode_server, encode_server_into, ClientFrame,
    ConvSummary, Entry, ErrorCode, Event, Kind, Msg, RawJson, ServerFrame, Subprotocol,
    BODY_BYTES_MAX, SYNC_LIMIT_MAX,
};

const BOTH: [Subprotocol; 2] = [Subprotocol::Json, Subprotocol::Rkyv];

fn any_kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

fn any_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

/// Any JSON value, written in a random but valid spelling (extra spaces,
/// exponents), so raw text preservation is exercised.
fn any_json() -> impl Strategy<Value = RawJson> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1000i32..1000, 0u8..20).prop_map(|(m, e)| format!("{m}.5e{e}")),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
    ];
    let text = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(" , "))),
            vec((any::<String>(), inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}: {v}", serde_json::to_string(&k).unwrap_or_default()))
                    .collect();
                format!("{{ {} }}", fields.join(","))
            }),
        ]
    });
    text.prop_map(|t| RawJson::from_text(t).unwrap_or_else(|_| RawJson::null()))
}

fn any_string_body() -> impl Strategy<Value = RawJson> {
    any::<String>()
        .prop_map(|s| RawJson::from_text(serde_json::to_string(&s).unwrap_or_default()).unwrap())
}

fn any_client() -> impl Strategy<Value = ClientFrame> {
    let send = (
        any::<String>(),
        any::<String>(),
        any_kind(),
        any_json(),
        any_string_body(),
    )
        .prop_map(|(cmid, to, kind, body, text)| {
            let body = if kind == Kind::Text { text } else { body };
            ClientFrame::Send {
                cmid,
                to,
                kind,
                body,
            }
        });
    prop_oneof![
        (any::<String>(), any::<String>())
            .prop_map(|(token, device)| ClientFrame::Auth { token, device }),
        send,
        (any::<String>(), any::<u64>()).prop_map(|(conv, seq)| ClientFrame::Ack { conv, seq }),
        (any::<String>(), any::<u64>()).prop_map(|(conv, seq)| ClientFrame::Read { conv, seq }),
        (
            any::<String>(),
            any::<u64>(),
            prop::option::of(1..=SYNC_LIMIT_MAX)
        )
            .prop_map(|(conv, after, limit)| ClientFrame::Sync { conv, after, limit }),
        Just(ClientFrame::Convs),
        any::<String>().prop_map(|to| ClientFrame::Typing { to }),
        Just(ClientFrame::Ping),
    ]
}

fn any_msg() -> impl Strategy<Value = Msg> {
    (
        any::<String>(),
        any::<u64>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any_kind(),
        any_json(),
        any::<u64>(),
    )
        .prop_map(|(conv, seq, from, device, cmid, kind, body, ts)| Msg {
            conv,
            seq,
            from,
            device,
            cmid,
            kind,
            body,
            ts,
        })
}

fn any_event() -> impl Strategy<Value = Event> {
    (
        any::<String>(),
        any::<u64>(),
        any::<u16>(),
        any_json(),
        any::<u64>(),
    )
        .prop_map(|(conv, seq, code, data, ts)| Event {
            conv,
            seq,
            code,
            data,
            ts,
        })
}

fn any_entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        any_msg().prop_map(Entry::Msg),
        any_event().prop_map(Entry::Event)
    ]
}

fn any_server() -> impl Strategy<Value = ServerFrame> {
    let s = any::<String>;
    prop_oneof![
        (s(), s(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(user, device, heartbeat_ms, ack_timeout_ms, ts)| {
                ServerFrame::AuthOk {
                    user,
                    device,
                    heartbeat_ms,
                    ack_timeout_ms,
                    ts,
                }
            }
        ),
        (s(), s(), any::<u64>(), any::<u64>()).prop_map(|(cmid, conv, seq, ts)| {
            ServerFrame::SendAck {
                cmid,
                conv,
                seq,
                ts,
            }
        }),
        (s(), any_code(), s()).prop_map(|(cmid, code, message)| ServerFrame::SendErr {
            cmid,
            code,
            message
        }),
        any_msg().prop_map(ServerFrame::Msg),
        any_event().prop_map(ServerFrame::Event),
        (s(), s(), any::<u64>()).prop_map(|(conv, user, read_seq)| ServerFrame::Receipt {
            conv,
            user,
            read_seq
        }),
        (s(), s()).prop_map(|(conv, user)| ServerFrame::Typing { conv, user }),
        (s(), any::<u64>()).prop_map(|(conv, max_seq)| ServerFrame::Notice { conv, max_seq }),
        s().prop_map(|reason| ServerFrame::Kicked { reason }),
        any::<u64>().prop_map(|ts| ServerFrame::Pong { ts }),
        (s(), vec(any_entry(), 0..4), any::<bool>()).prop_map(|(conv, messages, has_more)| {
            ServerFrame::SyncResult {
                conv,
                messages,
                has_more,
            }
        }),
        vec((s(), any::<u64>(), any::<u64>(), any::<u64>()), 0..4).prop_map(|v| {
            ServerFrame::ConvsResult {
                convs: v
                    .into_iter()
                    .map(|(conv, max_seq, read_seq, unread)| ConvSummary {
                        conv,
                        max_seq,
                        read_seq,
                        unread,
                    })
                    .collect(),
            }
        }),
        (any_code(), s()).prop_map(|(code, message)| ServerFrame::Error { code, message }),
    ]
}

/// `bytes` copied to an odd address, so decoders see unaligned input.
fn at_odd_offset(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(0xAA);
    v.extend_from_slice(bytes);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(f in any_client()) {
        for sp in BOTH {
            let bytes = encode_client(sp, &f);
            prop_assert_eq!(decode_client(sp, &bytes).map_err(|e| e.to_string()), Ok(f.clone()), "{:?}", sp);
            let odd = at_odd_offset(&bytes);
            prop_assert_eq!(decode_client(sp, &odd[1..]).map_err(|e| e.to_string()), Ok(f.clone()), "{:?}", sp);
        }
    }

    #[test]
    fn server_frames_round_trip(f in any_server()) {
        for sp in BOTH {
            let bytes = encode_server(sp, &f);
            prop_assert_eq!(decode_server(sp, &bytes).map_err(|e| e.to_string()), Ok(f.clone()), "{:?}", sp);
            let odd = at_odd_offset(&bytes);
            prop_assert_eq!(decode_server(sp, &odd[1..]).map_err(|e| e.to_string()), Ok(f.clone()), "{:?}", sp);
            // `_into` appends after what is there and matches the one-shot encoder.
            let mut out = vec![1, 2, 3];
            encode_server_into(sp, &f, &mut out);
            prop_assert_eq!(&out[..3], &[1, 2, 3]);
            prop_assert_eq!(&out[3..], &bytes[..]);
        }
    }

    #[test]
    fn entries_round_trip_through_storage_bytes(e in any_entry()) {
        let bytes = e.to_storage_bytes();
        prop_assert_eq!(Entry::from_storage_bytes(&bytes).map_err(|e| e.to_string()), Ok(e.clone()));
        let odd = at_odd_offset(&bytes);
        prop_assert_eq!(Entry::from_storage_bytes(&odd[1..]).map_err(|e| e.to_string()), Ok(e.clone()));
        // The JSON of an entry is the JSON of its push frame.
        let json = serde_json::to_vec(&e).unwrap();
        prop_assert_eq!(&json, &encode_server(Subprotocol::Json, &e.clone().into_frame()));
        prop_assert_eq!(serde_json::from_slice::<Entry>(&json).map_err(|e| e.to_string()), Ok(e));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for sp in BOTH {
            let _ = decode_client(sp, &bytes);
            let _ = decode_server(sp, &bytes);
        }
        let _ = Entry::from_storage_bytes(&bytes);
    }

    #[test]
    fn mutated_archives_never_panic(f in any_client(), idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode_client(Subprotocol::Rkyv, &f);
        prop_assume!(!bytes.is_empty());
        let i = idx.index(bytes.len());
        bytes[i] = byte;
        // Either an error or a frame that passes the limits; never a panic.
        if let Ok(ClientFrame::Send { body, kind, .. }) = decode_client(Subprotocol::Rkyv, &bytes) {
            prop_assert!(body.len() <= BODY_BYTES_MAX);
            prop_assert!(kind != Kind::Text || body.is_string());
            prop_assert!(RawJson::from_text(body.as_str()).is_ok());
        }
    }

    #[test]
    fn truncated_archives_are_errors(f in any_server(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_server(Subprotocol::Rkyv, &f);
        let n = cut.index(bytes.len());
        // Dropping the tail moves the root; any result but a panic is fine,
        // and a decode that works must not invent a body that is not JSON.
        if let Ok(ServerFrame::Msg(m)) = decode_server(Subprotocol::Rkyv, &bytes[..n]) {
            prop_assert!(RawJson::from_text(m.body.as_str()).is_ok());
        }
        let e = Entry::from_storage_bytes(&bytes[..n.min(3)]);
        prop_assert!(e.is_err());
    }
}

fn rkyv_send(kind: Kind, body_text: &str) -> Vec<u8> {
    // An archive built from raw strings, as a hostile client could: the body
    // is never checked on the way in.
    #[derive(rkyv::Archive, rkyv::Serialize)]
    enum FakeClientFrame {
        _Auth {
            token: String,
            device: String,
        },
        Send {
            cmid: String,
            to: String,
            kind: Kind,
            body: String,
        },
    }
    let f = FakeClientFrame::Send {
        cmid: "c7".into(),
        to: "user:u".into(),
        kind,
        body: body_text.into(),
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&f).unwrap().to_vec()
}

#[test]
fn rkyv_send_checks_body_json_and_limits() {
    let ok = decode_client(Subprotocol::Rkyv, &rkyv_send(Kind::Custom, " {\"a\":1} ")).unwrap();
    assert!(
        matches!(ok, ClientFrame::Send { ref body, .. } if body.as_str() == "{\"a\":1}"),
        "{ok:?}"
    );

    let e = decode_client(Subprotocol::Rkyv, &rkyv_send(Kind::Custom, "{not json")).unwrap_err();
    assert!(e.message().contains("not valid JSON"), "{e}");
    assert_eq!(e.cmid(), Some("c7"));

    let e = decode_client(Subprotocol::Rkyv, &rkyv_send(Kind::Text, "123")).unwrap_err();
    assert!(e.message().contains("JSON string"), "{e}");
    assert_eq!(e.cmid(), Some("c7"));

    let big = format!("\"{}\"", "x".repeat(BODY_BYTES_MAX));
    let e = decode_client(Subprotocol::Rkyv, &rkyv_send(Kind::Text, &big)).unwrap_err();
    assert!(e.is_too_large());
    assert_eq!(e.cmid(), Some("c7"));
}

#[test]
fn rkyv_sync_limit_is_checked() {
    for (limit, ok) in [
        (0, false),
        (1, true),
        (SYNC_LIMIT_MAX, true),
        (SYNC_LIMIT_MAX + 1, false),
        (u32::MAX, false),
    ] {
        let f = ClientFrame::Sync {
            conv: "group:g".into(),
            after: 0,
            limit: Some(limit),
        };
        let bytes = encode_client(Subprotocol::Rkyv, &f);
        assert_eq!(
            decode_client(Subprotocol::Rkyv, &bytes).is_ok(),
            ok,
            "{limit}"
        );
        let bytes = encode_client(Subprotocol::Json, &f);
        assert_eq!(
            decode_client(Subprotocol::Json, &bytes).is_ok(),
            ok,
            "{limit}"
        );
    }
}

#[test]
fn rkyv_rejects_empty_and_foreign_input() {
    for bytes in [&b""[..], b"\0", b"{\"type\":\"ping\"}", &[0xff; 64]] {
        let e = decode_client(Subprotocol::Rkyv, bytes).unwrap_err();
        assert!(e.message().starts_with("invalid rkyv frame"), "{e}");
        assert!(decode_server(Subprotocol::Rkyv, bytes).is_err());
    }
    let e = Entry::from_storage_bytes(b"").unwrap_err();
    assert!(e.message().starts_with("corrupt stored entry"), "{e}");
}

#[test]
fn stored_entry_with_a_bad_body_is_refused() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct FakeMsg {
        conv: String,
        seq: u64,
        from: String,
        device: String,
        cmid: String,
        kind: Kind,
        body: String,
        ts: u64,
    }
    #[derive(rkyv::Archive, rkyv::Serialize)]
    enum FakeEntry {
        Msg(FakeMsg),
    }
    let fake = |body: &str| {
        let m = FakeMsg {
            conv: "group:g".into(),
            seq: 1,
            from: "a".into(),
            device: "d".into(),
            cmid: "c".into(),
            kind: Kind::Custom,
            body: body.into(),
            ts: 2,
        };
        rkyv::to_bytes::<rkyv::rancor::Error>(&FakeEntry::Msg(m))
            .unwrap()
            .to_vec()
    };
    let good = Entry::from_storage_bytes(&fake("[1]")).unwrap();
    assert_eq!(good.seq(), 1);
    assert_eq!(good.ts(), 2);
    assert_eq!(good.conv(), "group:g");
    let e = Entry::from_storage_bytes(&fake("[1")).unwrap_err();
    assert!(e.message().contains("not valid JSON"), "{e}");
}

/// `bytes` copied to offset `at` of a fresh buffer.
fn at_offset(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = vec![0xAA; at];
    v.extend_from_slice(bytes);
    v
}

/// Whether `s` has a hex literal with digits (a memory address, for one).
fn has_hex_literal(s: &str) -> bool {
    s.match_indices("0x")
        .any(|(i, _)| s[i + 2..].starts_with(|c: char| c.is_ascii_hexdigit()))
}

/// Regression, found by the `rkyv_frame` fuzz target: bytecheck's errors
/// name the addresses of the checked buffer ("subtree pointer overran range:
/// ptr 0x00007b5c985e0030 ..."), and the message goes to the client in an
/// `error` frame, telling it where the server's heap is. The message must not
/// depend on where the frame sits in memory.
#[test]
fn rkyv_errors_do_not_leak_addresses() {
    let send = encode_client(
        Subprotocol::Rkyv,
        &ClientFrame::Ack {
            conv: "dm:a:b".into(),
            seq: 1,
        },
    );
    let inputs: [&[u8]; 4] = [&[], &[0; 3], &[0xFF; 40], &send[..send.len() - 1]];
    for bytes in inputs {
        let first = at_offset(bytes, 0);
        let client = decode_client(Subprotocol::Rkyv, &first).unwrap_err();
        let server = decode_server(Subprotocol::Rkyv, &first).unwrap_err();
        let entry = Entry::from_storage_bytes(&first).unwrap_err();
        for e in [&client, &server, &entry] {
            assert!(!has_hex_literal(e.message()), "{}", e.message());
        }
        for at in [1, 7, 64] {
            let moved = at_offset(bytes, at);
            assert_eq!(
                decode_client(Subprotocol::Rkyv, &moved[at..]),
                Err(client.clone())
            );
            assert_eq!(
                decode_server(Subprotocol::Rkyv, &moved[at..]),
                Err(server.clone())
            );
            assert_eq!(Entry::from_storage_bytes(&moved[at..]), Err(entry.clone()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any input decodes to the same result (error messages included) at
    /// any address.
    #[test]
    fn rkyv_results_do_not_depend_on_the_address(
        f in any_client(),
        idx in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_client(Subprotocol::Rkyv, &f);
        let i = idx.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(cut.index(bytes.len() + 1));
        let moved = at_offset(&bytes, 3);
        prop_assert_eq!(decode_client(Subprotocol::Rkyv, &bytes), decode_client(Subprotocol::Rkyv, &moved[3..]));
        prop_assert_eq!(decode_server(Subprotocol::Rkyv, &bytes), decode_server(Subprotocol::Rkyv, &moved[3..]));
        if let Err(e) = decode_client(Subprotocol::Rkyv, &bytes) {
            prop_assert!(!has_hex_literal(e.message()), "{}", e.message());
        }
    }
}

/// Found by the `json_frame` fuzzer: serde quotes a mistyped value whole,
/// and the message goes back to the client in an error frame. It must not
/// echo client input without a bound.
#[test]
fn json_error_messages_do_not_echo_input_unbounded() {
    use tern_proto::codec::ERROR_MESSAGE_BYTES_MAX;
    let mut crash = vec![b'"'];
    crash.extend(std::iter::repeat_n(0x7f, 97));
    crash.extend_from_slice(b"d\":/2");
    let long = format!("\"{}\"", "\u{7f}".repeat(20_000));
    let mistyped = format!("{{\"type\":{}}}", "9".repeat(10_000));
    let sp = tern_proto::Subprotocol::Json;
    for input in [crash, long.into_bytes(), mistyped.into_bytes()] {
        let e = tern_proto::codec::decode_client(sp, &input).expect_err("not a frame");
        assert!(!e.message().is_empty());
        assert!(
            e.message().len() <= ERROR_MESSAGE_BYTES_MAX,
            "{} bytes: {}",
            e.message().len(),
            e.message()
        );
        let s = tern_proto::codec::decode_server(sp, &input).expect_err("not a frame");
        assert!(s.message().len() <= ERROR_MESSAGE_BYTES_MAX);
    }
}
