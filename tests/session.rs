//! PROTOCOL.md "Session" and the WebSocket endpoint: auth, tokens, the auth
//! deadline, ping, bad frames, the frame size limit, subprotocol
//! negotiation, replacement of a (user, device), revocation.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// Asserts the PROTOCOL answer to a refused auth: an `error` with code
/// `unauthorized` (if the server sends one before closing) and close 4401.
async fn assert_refused(c: &mut Client, first: Value, what: &str) {
    assert_eq!(first["type"], "error", "{what}: {first}");
    assert_eq!(first["code"], "unauthorized", "{what}: {first}");
    assert!(
        first["message"].is_string(),
        "{what}: error without message: {first}"
    );
    let code = c.expect_close(REPLY).await;
    assert_eq!(code, Some(4401), "{what}: close code");
}

#[tokio::test]
async fn auth_ok_carries_user_device_heartbeat_ack_timeout_and_ts() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    for sp in SPS {
        let tok = s.token("alice", Some("phone")).await;
        let mut c = Client::connect(&s, sp).await;
        let ok = c.auth(&tok, "phone").await;
        assert_eq!(ok["type"], "auth_ok", "{sp:?}: {ok}");
        assert_eq!(ok["user"], "alice", "{sp:?}: {ok}");
        assert_eq!(ok["device"], "phone", "{sp:?}: {ok}");
        // PROTOCOL defaults; the server was started without tuning flags.
        assert_eq!(ok["heartbeat_ms"], 30_000, "{sp:?}: {ok}");
        assert_eq!(ok["ack_timeout_ms"], 10_000, "{sp:?}: {ok}");
        assert_ts_recent(&ok["ts"], "auth_ok.ts");
        // The session works after auth_ok.
        let pong = c.ping().await;
        assert_ts_recent(&pong["ts"], "pong.ts");
    }
}

#[tokio::test]
async fn garbage_and_forged_tokens_are_refused_with_4401() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        let good = s.token("alice", Some("phone")).await;

        let mut c = Client::connect(&s, sp).await;
        let r = c.auth("not-a-token", "phone").await;
        assert_refused(&mut c, r, &format!("{sp:?} garbage token")).await;

        let mut c = Client::connect(&s, sp).await;
        let r = c.auth("", "phone").await;
        assert_refused(&mut c, r, &format!("{sp:?} empty token")).await;

        // One character changed in the middle of a real token.
        let mut forged: Vec<char> = good.chars().collect();
        let mid = forged.len() / 2;
        forged[mid] = if forged[mid] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        assert_ne!(forged, good);
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&forged, "phone").await;
        assert_refused(&mut c, r, &format!("{sp:?} forged token")).await;

        // Truncated token.
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&good[..good.len() - 4], "phone").await;
        assert_refused(&mut c, r, &format!("{sp:?} truncated token")).await;

        // The good token still works (the failures above changed nothing).
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&good, "phone").await;
        assert_eq!(r["type"], "auth_ok", "{sp:?}: {r}");
        assert_eq!(r["user"], "alice");
    }
}

#[tokio::test]
async fn expired_token_is_refused() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let (st, v) = s
        .request(
            "POST",
            "/v1/users/alice/tokens",
            Some(json!({ "device": "phone", "ttl_s": 1 })),
        )
        .await;
    assert_eq!(st, 200, "ttl_s 1 is within bounds: {v}");
    let tok = v["token"].as_str().expect("token").to_string();
    let expires = v["expires_ts"].as_u64().expect("expires_ts");
    let now = now_ms();
    assert!(
        expires > now && expires <= now + 5_000,
        "expires_ts {expires} should be ~1 s after {now}"
    );
    // Past the expiry, with a margin for a server that keeps expiry in whole seconds.
    tokio::time::sleep(Duration::from_millis(
        expires.saturating_sub(now_ms()) + 1_500,
    ))
    .await;
    for sp in SPS {
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&tok, "phone").await;
        assert_refused(&mut c, r, &format!("{sp:?} expired token")).await;
    }
}

#[tokio::test]
async fn token_for_one_device_is_refused_for_another_and_deviceless_token_fits_any() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    for sp in SPS {
        let phone_tok = s.token("alice", Some("phone")).await;
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&phone_tok, "tablet").await;
        assert_refused(&mut c, r, &format!("{sp:?} phone token used by tablet")).await;

        let any_tok = s.token("alice", None).await;
        for dev in ["tablet", "laptop"] {
            let mut c = Client::connect(&s, sp).await;
            let r = c.auth(&any_tok, dev).await;
            assert_eq!(
                r["type"], "auth_ok",
                "{sp:?} device-less token on {dev}: {r}"
            );
            assert_eq!(r["device"], dev);
        }
    }
}

#[tokio::test]
async fn token_of_one_user_never_authenticates_as_another() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        let tok = s.token("bob", Some("phone")).await;
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&tok, "phone").await;
        // The token decides the user: it is bob, never anyone else.
        assert_eq!(r["type"], "auth_ok", "{sp:?}: {r}");
        assert_eq!(r["user"], "bob", "{sp:?}: {r}");
    }
}

#[tokio::test]
async fn invalid_device_id_in_auth_is_not_accepted() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    for sp in SPS {
        let tok = s.token("alice", None).await;
        let mut c = Client::connect(&s, sp).await;
        let r = c.auth(&tok, "bad device!").await;
        // A malformed id is bad_request or unauthorized; never auth_ok.
        assert_eq!(r["type"], "error", "{sp:?}: {r}");
        assert!(
            r["code"] == "bad_request" || r["code"] == "unauthorized",
            "{sp:?}: {r}"
        );
    }
}

#[tokio::test]
async fn frame_before_auth_closes_with_4401() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    for sp in SPS {
        for first in [
            json!({ "type": "ping" }),
            json!({ "type": "send", "cmid": "c1", "to": "user:bob", "kind": "text", "body": "hi" }),
            json!({ "type": "convs" }),
        ] {
            let mut c = Client::connect(&s, sp).await;
            c.send(&first).await;
            let code = c.expect_close(REPLY).await;
            assert_eq!(code, Some(4401), "{sp:?} {first}: close code");
            // Nothing but an unauthorized error may have come before the close.
            for f in c.inbox() {
                assert_eq!(
                    f["type"], "error",
                    "{sp:?} {first}: answered before auth: {f}"
                );
                assert_eq!(f["code"], "unauthorized", "{sp:?} {first}: {f}");
            }
        }
    }
    // Nothing was stored by the refused send.
    let h = s.history(&dm("alice", "bob"), 0, None).await;
    assert_eq!(h["messages"], json!([]), "{h}");
}

#[tokio::test]
async fn no_auth_within_5_s_closes_the_connection() {
    let s = Server::start(&[]).await;
    let started = Instant::now();
    let (mut c, _) = Client::connect_offer(&s, None).await;
    let code = c.expect_close(Duration::from_secs(12)).await;
    let waited = started.elapsed();
    // "sends within 5 s": the server must allow ~5 s (coarse timers may fire
    // a little early) and must not wait much longer.
    assert!(
        waited >= Duration::from_millis(4_000),
        "closed after only {waited:?} ({code:?})"
    );
    assert!(waited <= Duration::from_secs(10), "closed after {waited:?}");
    assert!(
        c.inbox().iter().all(|f| f["type"] == "error"),
        "frames before close: {:?}",
        c.inbox()
    );
}

#[tokio::test]
async fn ping_gets_pong_with_server_ts() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    for sp in SPS {
        let mut c = s.login(sp, "alice", "phone").await;
        for _ in 0..3 {
            let p = c.ping().await;
            assert_eq!(p["type"], "pong");
            assert_ts_recent(&p["ts"], "pong.ts");
        }
        // A WebSocket ping is fine too and the session stays up.
        c.ws_ping().await;
        c.ping().await;
    }
}

#[tokio::test]
async fn bad_json_frames_get_bad_request_and_the_connection_stays_open() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let mut c = s.login(Subprotocol::Json, "alice", "phone").await;
    let bad = [
        r#"{"type":"no_such_type"}"#,
        r#"{"type":"ack","conv":"dm:alice:alice"}"#, // missing seq
        r#"{"type":"sync"}"#,                        // missing conv and after
        r#"{"type":"read","conv":"dm:alice:alice","seq":"one"}"#, // wrong field type
        r#"{"no_type":1}"#,
        r#"{not json"#,
        r#"[1,2,3]"#,
        r#""ping""#,
        "",
    ];
    for text in bad {
        c.send_raw_text(text.to_string()).await;
        let e = c.expect("error", REPLY).await;
        assert_eq!(e["code"], "bad_request", "{text:?}: {e}");
        assert!(e["message"].is_string(), "{text:?}: {e}");
        // Still open and working.
        c.ping().await;
    }
    // Unknown fields are ignored.
    c.send_raw_text(r#"{"type":"ping","extra":{"a":[1,2]},"n":7}"#.to_string())
        .await;
    c.expect("pong", REPLY).await;
    c.quiet(&["error"], QUIET).await;
}

#[tokio::test]
async fn bad_rkyv_frames_get_bad_request_and_the_connection_stays_open() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let mut c = s.login(Subprotocol::Rkyv, "alice", "phone").await;
    let valid = encode(
        Subprotocol::Rkyv,
        &json!({ "type": "sync", "conv": "dm:alice:alice", "after": 0 }),
    );
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 16],
        vec![0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03],
        valid[..valid.len() / 2].to_vec(),
        {
            // The root's variant tag (the root object sits at the end of an
            // rkyv buffer) set to a variant that does not exist.
            let mut v = valid.clone();
            let root = v.len() - std::mem::size_of::<tern_proto::ArchivedClientFrame>();
            v[root] = 0xee;
            v
        },
    ];
    for b in bad {
        c.send_raw_binary(b.clone()).await;
        let e = c.expect("error", REPLY).await;
        assert_eq!(e["code"], "bad_request", "{b:?}: {e}");
        c.ping().await;
    }
    c.quiet(&["error"], QUIET).await;
}

#[tokio::test]
async fn frame_over_64_kib_closes_with_1009_and_just_under_is_fine() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    for sp in SPS {
        let name = if sp == Subprotocol::Json {
            JSON_PROTO
        } else {
            RKYV_PROTO
        };
        let mut raw = RawWs::connect(s.ws_addr, Some(name));
        assert_eq!(raw.header("sec-websocket-protocol"), Some(name));
        let tok = s.token("alice", Some("phone")).await;
        let auth = json!({ "type": "auth", "token": tok, "device": "phone" });
        let op = if sp == Subprotocol::Json {
            OP_TEXT
        } else {
            OP_BINARY
        };
        raw.send_frame(op, &encode(sp, &auth)).expect("write");
        let ok = raw.read_value(REPLY);
        assert_eq!(ok["type"], "auth_ok", "{sp:?}: {ok}");

        if sp == Subprotocol::Json {
            // ~60 KiB, under the 64 KiB limit: a ping with an ignored field.
            let pad = "x".repeat(60 * 1024);
            raw.send_json(&json!({ "type": "ping", "pad": pad }));
            let p = raw.read_value(REPLY);
            assert_eq!(p["type"], "pong", "a 60 KiB frame is allowed: {p}");
        }

        let big = vec![b'x'; 64 * 1024 + 1024];
        let _ = raw.send_frame(op, &big); // the server may stop reading early
        let (code, _) = raw.read_close(REPLY);
        assert_eq!(code, Some(1009), "{sp:?}: close code for a 65 KiB frame");
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let mut raw = RawWs::connect(s.ws_addr, Some(JSON_PROTO));
    let tok = s.token("alice", Some("phone")).await;
    raw.send_json(&json!({ "type": "auth", "token": tok, "device": "phone" }));
    assert_eq!(raw.read_value(REPLY)["type"], "auth_ok");
    let _ = raw.send_frame(OP_TEXT, b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}");
    let (code, _) = raw.read_close(REPLY);
    assert_eq!(
        code,
        Some(1007),
        "close code for invalid UTF-8 in a text frame"
    );
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let auth = |tok: &str| json!({ "type": "auth", "token": tok, "device": "phone" });

    // (offer, expected answer header, subprotocol then spoken)
    let cases: [(Option<&str>, Option<&str>, Subprotocol); 6] = [
        (Some(RKYV_PROTO), Some(RKYV_PROTO), Subprotocol::Rkyv),
        (Some(JSON_PROTO), Some(JSON_PROTO), Subprotocol::Json),
        (None, None, Subprotocol::Json),
        (Some("chat.v9"), None, Subprotocol::Json),
        (
            Some("chat.v9, tern.v1.rkyv"),
            Some(RKYV_PROTO),
            Subprotocol::Rkyv,
        ),
        (
            Some("chat.v9, tern.v1.json"),
            Some(JSON_PROTO),
            Subprotocol::Json,
        ),
    ];
    for (offer, answer, sp) in cases {
        let mut raw = RawWs::connect(s.ws_addr, offer);
        assert_eq!(
            raw.header("sec-websocket-accept"),
            Some(SAMPLE_ACCEPT),
            "{offer:?}"
        );
        assert_eq!(
            raw.header("sec-websocket-protocol"),
            answer,
            "offer {offer:?}"
        );
        let tok = s.token("alice", Some("phone")).await;
        let op = if sp == Subprotocol::Json {
            OP_TEXT
        } else {
            OP_BINARY
        };
        raw.send_frame(op, &encode(sp, &auth(&tok))).expect("write");
        let (got_op, payload) = raw.read_frame(REPLY).expect("auth answer");
        assert_eq!(got_op, op, "offer {offer:?}: answer frame opcode");
        let ok = decode(sp, &payload);
        assert_eq!(ok["type"], "auth_ok", "offer {offer:?}: {ok}");
    }
}

#[tokio::test]
async fn bad_handshakes_are_refused() {
    let s = Server::start(&[]).await;
    let a = s.ws_addr;
    let no_upgrade = format!("GET /ws HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let wrong_path = RawWs::upgrade_request(a, None).replacen("GET /ws ", "GET /nope ", 1);
    let wrong_version = RawWs::upgrade_request(a, None)
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let no_key = RawWs::upgrade_request(a, None)
        .replace(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n"), "");
    let post = RawWs::upgrade_request(a, None).replacen("GET ", "POST ", 1);
    for (what, req) in [
        ("no upgrade", no_upgrade),
        ("wrong path", wrong_path),
        ("version 8", wrong_version),
        ("no key", no_key),
        ("POST", post),
    ] {
        let raw = RawWs::handshake(a, &req);
        assert_ne!(raw.status, 101, "{what}: upgraded anyway");
    }
    // Garbage instead of HTTP: no upgrade, and the server lives on.
    let raw = RawWs::handshake(a, "\x16\x03\x01\x00\x7fgarbage\r\n\r\n");
    assert_ne!(raw.status, 101);
    let (c, _) = Client::connect_offer(&s, None).await;
    c.close().await;
}

#[tokio::test]
async fn same_user_and_device_replaces_the_first_connection() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    for first_sp in SPS {
        for second_sp in SPS {
            let mut first = s.login(first_sp, "alice", "phone").await;
            let mut other = s.login(first_sp, "alice", "tablet").await;
            let mut second = s.login(second_sp, "alice", "phone").await;
            let k = first.expect("kicked", REPLY).await;
            assert_eq!(k["reason"], "replaced", "{first_sp:?}->{second_sp:?}: {k}");
            assert_eq!(
                first.expect_close(REPLY).await,
                Some(4409),
                "{first_sp:?}->{second_sp:?}"
            );
            // The new connection and the other device are untouched.
            second.ping().await;
            other.ping().await;
            other.quiet(&["kicked"], QUIET).await;
            second.quiet(&["kicked"], Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn deleted_user_is_disconnected_and_its_tokens_are_refused() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let old_tok = s.token("alice", Some("phone")).await;
    let old_any = s.token("alice", None).await;
    let mut online = s.login(Subprotocol::Json, "alice", "laptop").await;
    let mut online_r = s.login(Subprotocol::Rkyv, "alice", "tablet").await;
    let mut bob = s.login(Subprotocol::Json, "bob", "phone").await;

    let (st, v) = s.request("DELETE", "/v1/users/alice", None).await;
    assert_eq!(st, 204, "{v}");
    // Open connections are closed.
    online.expect_close(REPLY).await;
    online_r.expect_close(REPLY).await;
    // Other users are not.
    bob.ping().await;

    for sp in SPS {
        for tok in [&old_tok, &old_any] {
            let mut c = Client::connect(&s, sp).await;
            let r = c.auth(tok, "phone").await;
            assert_refused(&mut c, r, &format!("{sp:?} token of a deleted user")).await;
        }
    }
    // The user is gone for the API too.
    let (st, _) = s.request("GET", "/v1/users/alice", None).await;
    assert_eq!(st, 404);
    let (st, _) = s
        .request("POST", "/v1/users/alice/tokens", Some(json!({})))
        .await;
    assert_eq!(st, 404);

    // Re-creating the user does not bring the revoked tokens back; new ones work.
    s.put_user("alice").await;
    let mut c = Client::connect(&s, Subprotocol::Json).await;
    let r = c.auth(&old_tok, "phone").await;
    assert_refused(&mut c, r, "token minted before the user was deleted").await;
    let mut c = s.login(Subprotocol::Rkyv, "alice", "phone").await;
    c.ping().await;
}
