//! Writes the seed corpora under `fuzz/corpus/<target>/`: a handful of small
//! valid inputs per target (and a few near misses), built with the real
//! encoders so they stay in step with the code.
//!
//! Run from the repository root: `make fuzz-corpus`.

use std::fs;
use std::path::Path;

use tern_fuzz::{token_key, WsInput, TOKEN_DEVICE, TOKEN_MODE_MINT, TOKEN_MODE_RAW, TOKEN_NOW_MS};
use tern_proto::codec::{encode_client, encode_server};
use tern_proto::{
    ClientFrame, ConvSummary, DeviceId, Entry, ErrorCode, Event, Kind, Msg, RawJson, ServerFrame,
    Subprotocol, UserId,
};
use tern_wire::token::mint;
use tern_wire::ws::codec::{encode_client_frame, OpCode};

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// Index of 1000 in `WS_LIMITS`.
const LIMIT_1000: u8 = 7;
/// Index of 65_536 in `WS_LIMITS`.
const LIMIT_64K: u8 = 9;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)
    };

    for (name, input) in ws_seeds() {
        write("ws_frame", name, &input)?;
    }
    for (name, input) in handshake_seeds() {
        write("handshake", name, input.as_bytes())?;
    }
    for (name, f) in client_frames() {
        write("json_frame", name, &encode_client(Subprotocol::Json, &f))?;
        write("rkyv_frame", name, &encode_client(Subprotocol::Rkyv, &f))?;
    }
    for (name, f) in server_frames() {
        let name = format!("server_{name}");
        write("json_frame", &name, &encode_server(Subprotocol::Json, &f))?;
        write("rkyv_frame", &name, &encode_server(Subprotocol::Rkyv, &f))?;
    }
    write(
        "rkyv_frame",
        "entry_msg",
        &Entry::Msg(msg()).to_storage_bytes(),
    )?;
    for (name, s) in [
        ("bad_not_object", "[1,2]"),
        ("bad_unknown_type", r#"{"type":"nope"}"#),
        (
            "bad_text_not_string",
            r#"{"type":"send","cmid":"c","to":"user:b","kind":"text","body":{"a":1}}"#,
        ),
        (
            "bad_sync_limit",
            r#"{"type":"sync","conv":"g:x","after":0,"limit":0}"#,
        ),
    ] {
        write("json_frame", name, s.as_bytes())?;
    }
    for (name, input) in token_seeds() {
        write("token_verify", name, &input)?;
    }
    Ok(())
}

fn frame(fin: bool, op: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    encode_client_frame(fin, op, payload, MASK, out);
}

fn ws_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let one = |fin, op, payload: &[u8]| {
        let mut s = Vec::new();
        frame(fin, op, payload, &mut s);
        s
    };
    let mut fragmented = Vec::new();
    frame(false, OpCode::Text, b"Hel", &mut fragmented);
    frame(true, OpCode::Ping, b"p", &mut fragmented);
    frame(true, OpCode::Continuation, b"lo", &mut fragmented);
    let mut mixed = Vec::new();
    frame(true, OpCode::Binary, &[0xAB; 200], &mut mixed);
    frame(true, OpCode::Pong, b"", &mut mixed);
    frame(
        true,
        OpCode::Close,
        &[0x03, 0xE8, b'b', b'y', b'e'],
        &mut mixed,
    );
    // A header declaring 70 000 bytes (64-bit length form), then nothing.
    let mut big = vec![0x82, 0xFF];
    big.extend_from_slice(&70_000u64.to_be_bytes());
    big.extend_from_slice(&MASK);
    // 5 in the 16-bit form: not minimal.
    let non_minimal = vec![0x81, 0xFE, 0x00, 0x05, 1, 2, 3, 4, 1, 2, 3, 4, 5];
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    vec![
        (
            "text",
            WsInput::encode(
                LIMIT_1000,
                LIMIT_64K,
                &[],
                &one(true, OpCode::Text, b"Hello"),
            ),
        ),
        (
            "fragmented_split",
            WsInput::encode(LIMIT_1000, LIMIT_64K, &[3, 9, 14], &fragmented),
        ),
        (
            "mixed",
            WsInput::encode(LIMIT_64K, LIMIT_64K, &[1, 100], &mixed),
        ),
        (
            "big_header",
            WsInput::encode(LIMIT_64K, LIMIT_64K, &[5], &big),
        ),
        (
            "non_minimal",
            WsInput::encode(LIMIT_1000, LIMIT_1000, &[], &non_minimal),
        ),
        (
            "unmasked",
            WsInput::encode(LIMIT_1000, LIMIT_1000, &[], &unmasked),
        ),
        (
            "close_empty",
            WsInput::encode(0, 0, &[], &one(true, OpCode::Close, b"")),
        ),
    ]
}

fn handshake_seeds() -> Vec<(&'static str, String)> {
    let req = |extra: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    vec![
        ("plain", req("")),
        ("json", req("Sec-WebSocket-Protocol: tern.v1.json\r\n")),
        ("rkyv_list", req("Sec-WebSocket-Protocol: chat, tern.v1.rkyv\r\nOrigin: https://x\r\n")),
        ("trailing_frame", req("Content-Length: 0\r\n") + "\u{81}\u{85}abcd"),
        (
            "query_and_case",
            "GET /ws?v=1 HTTP/1.1\r\nhost: h\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
             sec-websocket-key:  AAAAAAAAAAAAAAAAAAAAAA==  \r\nsec-websocket-version: 13\r\n\r\n"
                .to_owned(),
        ),
        ("post", req("").replacen("GET", "POST", 1)),
        ("version_8", req("").replace("Version: 13", "Version: 8")),
        ("partial", req("")[..40].to_owned()),
    ]
}

fn raw(s: &str) -> RawJson {
    RawJson::from_text(s).expect("valid JSON")
}

fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    vec![
        (
            "auth",
            ClientFrame::Auth {
                token: "abc.def".into(),
                device: "phone".into(),
            },
        ),
        (
            "send_text",
            ClientFrame::Send {
                cmid: "c1".into(),
                to: "user:bob".into(),
                kind: Kind::Text,
                body: raw(r#""hi \u00e9""#),
            },
        ),
        (
            "send_custom",
            ClientFrame::Send {
                cmid: "c2".into(),
                to: "group:g1".into(),
                kind: Kind::Custom,
                body: raw(r#"{"a":[1,2.5,null,true]}"#),
            },
        ),
        (
            "ack",
            ClientFrame::Ack {
                conv: "dm:alice:bob".into(),
                seq: 7,
            },
        ),
        (
            "read",
            ClientFrame::Read {
                conv: "g:g1".into(),
                seq: u64::MAX,
            },
        ),
        (
            "sync",
            ClientFrame::Sync {
                conv: "g:g1".into(),
                after: 3,
                limit: Some(50),
            },
        ),
        (
            "sync_default",
            ClientFrame::Sync {
                conv: "g:g1".into(),
                after: 0,
                limit: None,
            },
        ),
        ("convs", ClientFrame::Convs),
        (
            "typing",
            ClientFrame::Typing {
                to: "user:bob".into(),
            },
        ),
        ("ping", ClientFrame::Ping),
    ]
}

fn msg() -> Msg {
    Msg {
        conv: "dm:alice:bob".into(),
        seq: 42,
        from: "alice".into(),
        device: "phone".into(),
        cmid: "c1".into(),
        kind: Kind::Text,
        body: raw(r#""hello""#),
        ts: 1_700_000_000_000,
    }
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let event = Event {
        conv: "g:g1".into(),
        seq: 5,
        code: 1,
        data: raw(r#"{"x":1}"#),
        ts: 9,
    };
    vec![
        ("msg", ServerFrame::Msg(msg())),
        (
            "send_err",
            ServerFrame::SendErr {
                cmid: "c1".into(),
                code: ErrorCode::TooLarge,
                message: "big".into(),
            },
        ),
        (
            "sync_result",
            ServerFrame::SyncResult {
                conv: "g:g1".into(),
                messages: vec![Entry::Msg(msg()), Entry::Event(event)],
                has_more: true,
            },
        ),
        (
            "convs_result",
            ServerFrame::ConvsResult {
                convs: vec![ConvSummary {
                    conv: "g:g1".into(),
                    max_seq: 9,
                    read_seq: 3,
                    unread: 6,
                }],
            },
        ),
        ("pong", ServerFrame::Pong { ts: 1 }),
    ]
}

fn token_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let key = token_key();
    let user = UserId::parse("alice").expect("valid id");
    let phone = DeviceId::parse(TOKEN_DEVICE).expect("valid id");
    let laptop = DeviceId::parse("laptop").expect("valid id");
    let day = 86_400_000;
    let raw_mode = |t: String| [&[TOKEN_MODE_RAW][..], t.as_bytes()].concat();
    let mint_mode = |iat: u64, ttl: u64, flip: u16, user: &str, dev: &str| {
        let mut v = vec![TOKEN_MODE_MINT];
        v.extend_from_slice(&iat.to_le_bytes());
        v.extend_from_slice(&ttl.to_le_bytes());
        v.extend_from_slice(&flip.to_le_bytes());
        v.push(0x01);
        v.push(user.len() as u8);
        v.extend_from_slice(user.as_bytes());
        v.extend_from_slice(dev.as_bytes());
        v
    };
    vec![
        (
            "bound",
            raw_mode(mint(&key, &user, Some(&phone), TOKEN_NOW_MS - 1, day)),
        ),
        (
            "unbound",
            raw_mode(mint(&key, &user, None, TOKEN_NOW_MS - 1, day)),
        ),
        (
            "other_device",
            raw_mode(mint(&key, &user, Some(&laptop), TOKEN_NOW_MS - 1, day)),
        ),
        ("expired", raw_mode(mint(&key, &user, None, 0, 1))),
        ("garbage", raw_mode("not.a-token".into())),
        (
            "mint_bound",
            mint_mode(TOKEN_NOW_MS, day, 3, "alice", "phone"),
        ),
        (
            "mint_unbound",
            mint_mode(0, u64::MAX, 60, "bob@example.com", ""),
        ),
        (
            "mint_long_ids",
            mint_mode(5, 5, 200, &"u".repeat(64), &"d".repeat(64)),
        ),
    ]
}
