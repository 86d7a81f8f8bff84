//! `tern.v1.json`: decoding of every client frame, every error case, and
//! the exact shape of what the server sends.

use tern_proto::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, ConvSummary,
    DecodeError, Entry, ErrorCode, Event, Kind, Msg, RawJson, ServerFrame, Subprotocol,
    BODY_BYTES_MAX,
};

const JSON: Subprotocol = Subprotocol::Json;

fn client(s: &str) -> ClientFrame {
    match decode_client(JSON, s.as_bytes()) {
        Ok(f) => f,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn client_err(s: &str) -> DecodeError {
    match decode_client(JSON, s.as_bytes()) {
        Ok(f) => panic!("{s} decoded as {f:?}"),
        Err(e) => e,
    }
}

fn raw(s: &str) -> RawJson {
    RawJson::from_text(s).unwrap()
}

#[test]
fn decodes_every_client_frame() {
    assert_eq!(
        client(r#"{"type":"auth","token":"t.k","device":"phone"}"#),
        ClientFrame::Auth {
            token: "t.k".into(),
            device: "phone".into()
        }
    );
    assert_eq!(
        client(r#"{"type":"send","cmid":"c1","to":"user:bob","kind":"text","body":"hi"}"#),
        ClientFrame::Send {
            cmid: "c1".into(),
            to: "user:bob".into(),
            kind: Kind::Text,
            body: raw("\"hi\"")
        }
    );
    assert_eq!(
        client(r#"{"type":"ack","conv":"dm:a:b","seq":18446744073709551615}"#),
        ClientFrame::Ack {
            conv: "dm:a:b".into(),
            seq: u64::MAX
        }
    );
    assert_eq!(
        client(r#"{"type":"read","conv":"group:g","seq":7}"#),
        ClientFrame::Read {
            conv: "group:g".into(),
            seq: 7
        }
    );
    assert_eq!(
        client(r#"{"type":"sync","conv":"group:g","after":3,"limit":500}"#),
        ClientFrame::Sync {
            conv: "group:g".into(),
            after: 3,
            limit: Some(500)
        }
    );
    assert_eq!(
        client(r#"{"type":"sync","conv":"group:g"}"#),
        ClientFrame::Sync {
            conv: "group:g".into(),
            after: 0,
            limit: None
        }
    );
    assert_eq!(client(r#"{"type":"convs"}"#), ClientFrame::Convs);
    assert_eq!(
        client(r#"{"type":"typing","to":"group:g"}"#),
        ClientFrame::Typing {
            to: "group:g".into()
        }
    );
    assert_eq!(client(r#"{"type":"ping"}"#), ClientFrame::Ping);
}

#[test]
fn send_keeps_the_body_text_verbatim() {
    let f = client(
        r#"{"type":"send","cmid":"c","to":"group:g","kind":"image","body": {"url" : "u", "size":1.50e3} }"#,
    );
    let ClientFrame::Send { body, kind, .. } = f else {
        panic!("{f:?}")
    };
    assert_eq!(kind, Kind::Image);
    assert_eq!(body.as_str(), r#"{"url" : "u", "size":1.50e3}"#);
    // Escapes stay as sent too.
    let f = client(
        r#"{"type":"send","cmid":"c\u0031","to":"group:g","kind":"text","body":"a\"\u00e9"}"#,
    );
    let ClientFrame::Send { body, cmid, .. } = f else {
        panic!("{f:?}")
    };
    assert_eq!(cmid, "c1");
    assert_eq!(body.as_str(), r#""a\"\u00e9""#);
}

#[test]
fn body_null_is_a_value_but_missing_body_is_an_error() {
    let f = client(r#"{"type":"send","cmid":"c","to":"group:g","kind":"custom","body":null}"#);
    assert!(
        matches!(f, ClientFrame::Send { ref body, .. } if body.as_str() == "null"),
        "{f:?}"
    );
    let e = client_err(r#"{"type":"send","cmid":"c","to":"group:g","kind":"custom"}"#);
    assert_eq!(e.message(), "missing field `body` in send");
    assert_eq!(e.cmid(), Some("c"));
    assert!(!e.is_too_large());
    assert_eq!(e.code(), ErrorCode::BadRequest);
}

#[test]
fn unknown_fields_are_ignored() {
    assert_eq!(
        client(
            r#"{"x":{"deep":[1,{"a":null}]},"type":"ack","extra":"y","conv":"c","seq":1,"z":[]}"#
        ),
        ClientFrame::Ack {
            conv: "c".into(),
            seq: 1
        }
    );
    assert_eq!(
        client(r#"{"type":"ping","token":5,"ts":"x"}"#),
        ClientFrame::Ping
    );
    assert_eq!(client(r#"{"type":"convs","body":{}}"#), ClientFrame::Convs);
    // A field of another frame type is unknown here, whatever its JSON type.
    assert_eq!(
        client(
            r#"{"type":"typing","to":"group:g","seq":"x","limit":-4,"kind":{"k":1},"cmid":null}"#
        ),
        ClientFrame::Typing {
            to: "group:g".into()
        }
    );
}

#[test]
fn field_order_does_not_matter() {
    let want = ClientFrame::Send {
        cmid: "c".into(),
        to: "user:u".into(),
        kind: Kind::Voice,
        body: raw("{}"),
    };
    for s in [
        r#"{"type":"send","cmid":"c","to":"user:u","kind":"voice","body":{}}"#,
        r#"{"body":{},"kind":"voice","to":"user:u","cmid":"c","type":"send"}"#,
        r#"{"to":"user:u","body":{},"type":"send","kind":"voice","cmid":"c"}"#,
        " \n{ \"kind\" : \"voice\" , \"cmid\":\"c\",\"type\":\"send\",\"body\":{},\"to\":\"user:u\"}\n ",
    ] {
        assert_eq!(client(s), want, "{s}");
    }
}

#[test]
fn missing_fields_are_named_with_the_frame_type() {
    let cases = [
        (
            r#"{"type":"auth","device":"d"}"#,
            "missing field `token` in auth",
        ),
        (
            r#"{"type":"auth","token":"t"}"#,
            "missing field `device` in auth",
        ),
        (
            r#"{"type":"send","to":"user:u","kind":"text","body":"x"}"#,
            "missing field `cmid` in send",
        ),
        (
            r#"{"type":"send","cmid":"c","kind":"text","body":"x"}"#,
            "missing field `to` in send",
        ),
        (
            r#"{"type":"send","cmid":"c","to":"user:u","body":"x"}"#,
            "missing field `kind` in send",
        ),
        (r#"{"type":"ack","seq":1}"#, "missing field `conv` in ack"),
        (r#"{"type":"ack","conv":"c"}"#, "missing field `seq` in ack"),
        (
            r#"{"type":"read","conv":"c"}"#,
            "missing field `seq` in read",
        ),
        (
            r#"{"type":"sync","after":1}"#,
            "missing field `conv` in sync",
        ),
        (r#"{"type":"typing"}"#, "missing field `to` in typing"),
    ];
    for (s, want) in cases {
        assert_eq!(client_err(s).message(), want, "{s}");
    }
    // Send errors after the cmid carry it, so the engine can answer send_err.
    assert_eq!(
        client_err(r#"{"type":"send","cmid":"c","kind":"text","body":"x"}"#).cmid(),
        Some("c")
    );
    assert_eq!(
        client_err(r#"{"type":"send","to":"u","kind":"text","body":"x"}"#).cmid(),
        None
    );
}

#[test]
fn every_error_case_is_an_error_with_a_clear_message() {
    let cases: &[(&str, &str)] = &[
        ("", "malformed JSON"),
        ("{", "malformed JSON"),
        ("{\"type\":\"ping\"", "malformed JSON"),
        ("{\"type\":\"ping\"} x", "malformed JSON"),
        ("{\"type\":\"ping\"}{}", "malformed JSON"),
        ("{type:\"ping\"}", "malformed JSON"),
        ("\u{feff}{\"type\":\"ping\"}", "malformed JSON"),
        ("[\"ping\"]", "expected a frame object"),
        ("\"ping\"", "expected a frame object"),
        ("null", "expected a frame object"),
        ("42", "expected a frame object"),
        ("{}", "missing field `type`"),
        ("{\"type\":5}", "type"),
        ("{\"type\":\"pong\"}", "unknown frame type `pong`"),
        ("{\"type\":\"PING\"}", "unknown frame type `PING`"),
        (
            "{\"type\":\"ping\",\"type\":\"ping\"}",
            "duplicate field `type`",
        ),
        (r#"{"type":"ack","conv":"c","seq":-1}"#, "seq"),
        (r#"{"type":"ack","conv":"c","seq":1.5}"#, "seq"),
        (r#"{"type":"ack","conv":"c","seq":"1"}"#, "seq"),
        (
            r#"{"type":"ack","conv":"c","seq":18446744073709551616}"#,
            "seq",
        ),
        (r#"{"type":"ack","conv":5,"seq":1}"#, "conv"),
        (
            r#"{"type":"auth","token":null,"device":"d"}"#,
            "missing field `token` in auth",
        ),
        (r#"{"type":"sync","conv":"c","after":"0"}"#, "after"),
        (
            r#"{"type":"sync","conv":"c","limit":0}"#,
            "`limit` in sync must be 1..=500, got 0",
        ),
        (
            r#"{"type":"sync","conv":"c","limit":501}"#,
            "`limit` in sync must be 1..=500, got 501",
        ),
        (
            r#"{"type":"sync","conv":"c","limit":4294967297}"#,
            "`limit` in sync must be 1..=500",
        ),
        (r#"{"type":"sync","conv":"c","limit":-1}"#, "limit"),
        (
            r#"{"type":"send","cmid":"c","to":"u","kind":"gif","body":1}"#,
            "unknown kind `gif` in send",
        ),
        (
            r#"{"type":"send","cmid":"c","to":"u","kind":5,"body":1}"#,
            "kind",
        ),
        (
            r#"{"type":"send","cmid":"c","to":"u","kind":"text","body":1}"#,
            "text message must be a JSON string",
        ),
        (
            r#"{"type":"send","cmid":"c","to":"u","kind":"text","body":{"t":"x"}}"#,
            "must be a JSON string",
        ),
        (
            r#"{"type":"send","cmid":"c","to":"u","kind":"text","body":}"#,
            "malformed JSON",
        ),
    ];
    for (s, want) in cases {
        let e = client_err(s);
        assert!(
            e.message().contains(want),
            "{s}: got {:?}, want it to contain {want:?}",
            e.message()
        );
        assert!(!e.is_too_large(), "{s}");
        assert_eq!(e.to_string(), e.message());
    }
    // Mistyped fields name the field.
    let e = client_err(r#"{"type":"ack","conv":"c","seq":"1"}"#);
    assert_eq!(
        e.message(),
        "`seq` in ack must be an unsigned integer, got a string"
    );
    let e = client_err(r#"{"type":"send","cmid":7,"to":"u","kind":"text","body":"x"}"#);
    assert_eq!(e.message(), "`cmid` in send must be a string, got a number");
    let e = client_err(r#"{"type":"send","cmid":"c","to":["u"],"kind":"text","body":"x"}"#);
    assert_eq!(e.message(), "`to` in send must be a string, got an array");
    assert_eq!(e.cmid(), Some("c"));
    let e = client_err(r#"{"type":"ack","conv":"c","seq":1e3}"#);
    assert!(
        e.message()
            .starts_with("`seq` in ack must be an unsigned integer, got a fraction"),
        "{e}"
    );
    // Invalid UTF-8 is malformed, not a panic.
    assert!(decode_client(
        JSON,
        b"{\"type\":\"auth\",\"token\":\"\xff\",\"device\":\"d\"}"
    )
    .is_err());
    // Long unknown types are not echoed in full.
    let long = format!("{{\"type\":\"{}\"}}", "x".repeat(1000));
    assert!(client_err(&long).message().len() < 100);
}

#[test]
fn body_limit_is_too_large_and_carries_the_cmid() {
    // A string body whose JSON text is exactly the limit passes.
    let fits = format!("\"{}\"", "a".repeat(BODY_BYTES_MAX - 2));
    let s = format!(r#"{{"type":"send","cmid":"c9","to":"user:u","kind":"text","body":{fits}}}"#);
    assert!(
        matches!(client(&s), ClientFrame::Send { ref body, .. } if body.len() == BODY_BYTES_MAX)
    );
    let over = format!("\"{}\"", "a".repeat(BODY_BYTES_MAX - 1));
    let s = format!(r#"{{"type":"send","cmid":"c9","to":"user:u","kind":"text","body":{over}}}"#);
    let e = client_err(&s);
    assert!(e.is_too_large());
    assert_eq!(e.code(), ErrorCode::TooLarge);
    assert_eq!(e.cmid(), Some("c9"));
    assert!(e.message().contains("32768"), "{}", e.message());
    // Measured on the JSON text, whitespace inside included.
    let spaced = format!("[{}1]", " ".repeat(BODY_BYTES_MAX));
    let s =
        format!(r#"{{"type":"send","cmid":"c","to":"user:u","kind":"custom","body":{spaced}}}"#);
    assert!(client_err(&s).is_too_large());
}

#[test]
fn serde_from_str_agrees_with_decode_client() {
    let s = r#"{"type":"send","cmid":"c","to":"user:u","kind":"file","body":{"a" : 1}}"#;
    assert_eq!(serde_json::from_str::<ClientFrame>(s).unwrap(), client(s));
    assert!(
        serde_json::from_str::<ClientFrame>(r#"{"type":"sync","conv":"c","limit":0}"#).is_err()
    );
    assert!(serde_json::from_str::<ClientFrame>(r#"["ping"]"#).is_err());
}

fn msg() -> Msg {
    Msg {
        conv: "dm:alice:bob".into(),
        seq: 42,
        from: "alice".into(),
        device: "phone".into(),
        cmid: "c-1".into(),
        kind: Kind::Image,
        body: raw(r#"{ "url":"https://x/y.png" , "size": 1.0e3 }"#),
        ts: 1_700_000_000_000,
    }
}

#[test]
fn msg_frame_is_exactly_the_protocol_object_with_the_raw_body() {
    let out = encode_server(JSON, &ServerFrame::Msg(msg()));
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        concat!(
            r#"{"type":"msg","conv":"dm:alice:bob","seq":42,"from":"alice","device":"phone","cmid":"c-1","#,
            r#""kind":"image","body":{ "url":"https://x/y.png" , "size": 1.0e3 },"ts":1700000000000}"#
        )
    );
    let back = decode_server(JSON, &out).unwrap();
    assert_eq!(back, ServerFrame::Msg(msg()));
}

#[test]
fn sync_result_entries_each_carry_their_type() {
    let ev = Event {
        conv: "group:g".into(),
        seq: 1,
        code: 1501,
        data: raw(r#"{"users":["a","b"]}"#),
        ts: 5,
    };
    let f = ServerFrame::SyncResult {
        conv: "group:g".into(),
        messages: vec![
            Entry::Event(ev.clone()),
            Entry::Msg(Msg {
                conv: "group:g".into(),
                seq: 2,
                ..msg()
            }),
        ],
        has_more: true,
    };
    let out = encode_server(JSON, &f);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["type"], "sync_result");
    assert_eq!(v["has_more"], true);
    assert_eq!(v["messages"][0]["type"], "event");
    assert_eq!(v["messages"][0]["code"], 1501);
    assert_eq!(
        v["messages"][0]["data"],
        serde_json::json!({"users": ["a", "b"]})
    );
    assert_eq!(v["messages"][1]["type"], "msg");
    assert_eq!(v["messages"][1]["seq"], 2);
    // Each entry is byte for byte the frame that was pushed.
    let text = std::str::from_utf8(&out).unwrap();
    let pushed_ev = String::from_utf8(encode_server(JSON, &ServerFrame::Event(ev))).unwrap();
    assert!(text.contains(&pushed_ev), "{text}");
    assert_eq!(decode_server(JSON, &out).unwrap(), f);
}

#[test]
fn server_frames_have_their_protocol_shape() {
    let cases = vec![
        (
            ServerFrame::AuthOk {
                user: "alice".into(),
                device: "phone".into(),
                heartbeat_ms: 30000,
                ack_timeout_ms: 10000,
                ts: 9,
            },
            serde_json::json!({"type":"auth_ok","user":"alice","device":"phone","heartbeat_ms":30000,"ack_timeout_ms":10000,"ts":9}),
        ),
        (
            ServerFrame::SendAck {
                cmid: "c".into(),
                conv: "group:g".into(),
                seq: 3,
                ts: 4,
            },
            serde_json::json!({"type":"send_ack","cmid":"c","conv":"group:g","seq":3,"ts":4}),
        ),
        (
            ServerFrame::SendErr {
                cmid: "c".into(),
                code: ErrorCode::NotMember,
                message: "m".into(),
            },
            serde_json::json!({"type":"send_err","cmid":"c","code":"not_member","message":"m"}),
        ),
        (
            ServerFrame::Receipt {
                conv: "dm:a:b".into(),
                user: "a".into(),
                read_seq: 2,
            },
            serde_json::json!({"type":"receipt","conv":"dm:a:b","user":"a","read_seq":2}),
        ),
        (
            ServerFrame::Typing {
                conv: "dm:a:b".into(),
                user: "a".into(),
            },
            serde_json::json!({"type":"typing","conv":"dm:a:b","user":"a"}),
        ),
        (
            ServerFrame::Notice {
                conv: "group:g".into(),
                max_seq: 8,
            },
            serde_json::json!({"type":"notice","conv":"group:g","max_seq":8}),
        ),
        (
            ServerFrame::Kicked {
                reason: "replaced".into(),
            },
            serde_json::json!({"type":"kicked","reason":"replaced"}),
        ),
        (
            ServerFrame::Pong { ts: 1 },
            serde_json::json!({"type":"pong","ts":1}),
        ),
        (
            ServerFrame::ConvsResult {
                convs: vec![ConvSummary {
                    conv: "group:g".into(),
                    max_seq: 5,
                    read_seq: 3,
                    unread: 2,
                }],
            },
            serde_json::json!({"type":"convs_result","convs":[{"conv":"group:g","max_seq":5,"read_seq":3,"unread":2}]}),
        ),
        (
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                message: "no".into(),
            },
            serde_json::json!({"type":"error","code":"bad_request","message":"no"}),
        ),
        (
            ServerFrame::Event(Event {
                conv: "group:g".into(),
                seq: 1,
                code: 1520,
                data: RawJson::null(),
                ts: 2,
            }),
            serde_json::json!({"type":"event","conv":"group:g","seq":1,"code":1520,"data":null,"ts":2}),
        ),
    ];
    for (f, want) in cases {
        let out = encode_server(JSON, &f);
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, want);
        assert_eq!(got["type"], f.type_name());
        assert_eq!(decode_server(JSON, &out).unwrap(), f);
    }
}

#[test]
fn client_frames_encode_to_their_protocol_shape() {
    let f = ClientFrame::Sync {
        conv: "group:g".into(),
        after: 0,
        limit: None,
    };
    let v: serde_json::Value = serde_json::from_slice(&encode_client(JSON, &f)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":"sync","conv":"group:g","after":0})
    );
    let f = ClientFrame::Send {
        cmid: "c".into(),
        to: "user:u".into(),
        kind: Kind::Text,
        body: raw("\"x\""),
    };
    assert_eq!(
        encode_client(JSON, &f),
        br#"{"type":"send","cmid":"c","to":"user:u","kind":"text","body":"x"}"#.to_vec()
    );
    assert_eq!(
        encode_client(JSON, &ClientFrame::Ping),
        br#"{"type":"ping"}"#.to_vec()
    );
}

#[test]
fn decode_server_reports_errors_and_ignores_unknown_fields() {
    let ok = br#"{"new_field":[1],"type":"pong","ts":3}"#;
    assert_eq!(
        decode_server(JSON, ok).unwrap(),
        ServerFrame::Pong { ts: 3 }
    );
    for (s, want) in [
        (r#"{"type":"pong"}"#, "missing field `ts` in pong"),
        (r#"{"type":"nope"}"#, "unknown frame type `nope`"),
        (
            r#"{"type":"error","code":"weird","message":"m"}"#,
            "unknown error code `weird` in error",
        ),
        (
            r#"{"type":"event","conv":"c","seq":1,"code":70000,"data":1,"ts":1}"#,
            "must be 0..=65535",
        ),
        (
            r#"{"type":"sync_result","conv":"c","messages":[{"type":"msg"}],"has_more":false}"#,
            "missing field",
        ),
        (
            r#"{"type":"sync_result","conv":"c","messages":[{"type":"pong"}],"has_more":false}"#,
            "unknown entry type",
        ),
        ("[]", "expected a frame object"),
        ("{", "malformed JSON"),
    ] {
        let e = decode_server(JSON, s.as_bytes()).unwrap_err();
        assert!(e.message().contains(want), "{s}: {e}");
    }
}

#[test]
fn subprotocol_names() {
    assert_eq!(
        Subprotocol::from_name("tern.v1.json"),
        Some(Subprotocol::Json)
    );
    assert_eq!(
        Subprotocol::from_name("tern.v1.rkyv"),
        Some(Subprotocol::Rkyv)
    );
    assert_eq!(Subprotocol::from_name("TERN.V1.JSON"), None);
    assert_eq!(Subprotocol::from_name(""), None);
    for sp in [Subprotocol::Json, Subprotocol::Rkyv] {
        assert_eq!(Subprotocol::from_name(sp.name()), Some(sp));
    }
    assert_eq!(Subprotocol::default(), Subprotocol::Json);
    assert_eq!(tern_proto::JSON_NAME, Subprotocol::JSON_NAME);
    assert_eq!(tern_proto::RKYV_NAME, "tern.v1.rkyv");
}
