//! Security through the real binary: no cross-user or cross-group reads or
//! writes through any client frame or HTTP route (a matrix), token refusal
//! (expired, another server's key, tampered, deleted user, other device),
//! API key checks, and a limit on every input with nothing stored when it
//! is refused.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// The first `error` frame, or panic.
async fn expect_error(c: &mut Client, code: &str, what: &str) {
    let v = c.expect("error", REPLY).await;
    assert_eq!(v["code"], code, "{what}: {v}");
}

/// Asserts an auth refusal: `error` `unauthorized`, then close 4401.
async fn refused(s: &Server, sp: Subprotocol, tok: &str, dev: &str, what: &str) {
    let mut c = Client::connect(s, sp).await;
    let first = c.auth(tok, dev).await;
    assert_eq!(first["type"], "error", "{what}: {first}");
    assert_eq!(first["code"], "unauthorized", "{what}: {first}");
    assert_eq!(
        c.expect_close(REPLY).await,
        Some(4401),
        "{what}: close code"
    );
}

/// Entries of `conv` as stored (HTTP history).
async fn stored(s: &Server, conv: &str) -> Vec<Value> {
    s.history_all(conv).await
}

// ---------------------------------------------------------------------------
// Cross-user and cross-group access
// ---------------------------------------------------------------------------

#[tokio::test]
async fn outsider_cannot_read_or_write_others_dm_or_a_group_it_is_not_in() {
    let s = Server::start(&[]).await;
    for sp in SPS {
        let t = tag(sp);
        let (a, b, c) = (format!("ma_{t}"), format!("mb_{t}"), format!("mc_{t}"));
        let (g, gone) = (format!("mg_{t}"), format!("mr_{t}"));
        s.put_users(&[&a, &b, &c]).await;
        s.put_group(&g, None, &[&b, &c]).await;
        // `a` was a member of `gone` and was removed.
        s.put_group(&gone, None, &[&a, &b]).await;
        let (st, v) = s.change_members(&gone, &[], &[&a]).await;
        assert_eq!(st, 200, "{v}");
        let bc = dm(&b, &c);
        let (gc, gonec) = (group_conv(&g), group_conv(&gone));

        let mut mb = s.login(sp, &b, "d").await;
        let mut mc = s.login(sp, &c, "d").await;
        assert_eq!(
            mb.send_text("s1", &format!("user:{c}"), "secret").await["type"],
            "send_ack"
        );
        assert_eq!(
            mb.send_text("s2", &gc, "group secret").await["type"],
            "send_ack"
        );
        assert_eq!(
            mb.send_text("s3", &gonec, "after removal").await["type"],
            "send_ack"
        );
        let before: Vec<(String, Vec<Value>)> = {
            let mut v = Vec::new();
            for conv in [&bc, &gc, &gonec] {
                v.push((conv.clone(), stored(&s, conv).await));
            }
            v
        };
        // c takes and acks what was pushed (no redelivery later).
        for conv in [&bc, &gc] {
            let got = mc.entries(conv, 1, REPLY).await;
            let last = got.last().expect("entry")["seq"].as_u64().expect("seq");
            mc.ack(conv, last).await;
        }

        let mut ma = s.login(sp, &a, "d").await;
        for (conv, code) in [
            (&bc, "not_member"),
            (&gc, "not_member"),
            (&gonec, "not_member"),
        ] {
            let w = format!("{sp:?} {a} on {conv}");
            // send (both forms of `to` for a group)
            let r = ma.send_msg("x1", conv, "text", json!("intrude")).await;
            assert_eq!(
                (r["type"].as_str(), r["code"].as_str()),
                (Some("send_err"), Some(code)),
                "{w} send: {r}"
            );
            // sync
            ma.send(&json!({"type": "sync", "conv": conv, "after": 0}))
                .await;
            expect_error(&mut ma, code, &format!("{w} sync")).await;
            // read (would move the read mark and send receipts)
            ma.send(&json!({"type": "read", "conv": conv, "seq": 1}))
                .await;
            expect_error(&mut ma, code, &format!("{w} read")).await;
            // typing
            ma.send(&json!({"type": "typing", "to": conv})).await;
            expect_error(&mut ma, code, &format!("{w} typing")).await;
            // ack: accepted silently, changes nothing of anyone else's
            ma.send(&json!({"type": "ack", "conv": conv, "seq": 1}))
                .await;
        }
        // `group:<id>` as a target, and a dm of others named in reverse order.
        let r = ma
            .send_msg("x2", &format!("group:{g}"), "text", json!("x"))
            .await;
        assert_eq!(r["code"], "not_member", "{r}");
        let r = ma
            .send_msg("x3", &format!("dm:{c}:{b}"), "text", json!("x"))
            .await;
        assert_eq!(r["type"], "send_err", "reversed dm id: {r}");
        // No frame of theirs reached a; nothing of a's reached them.
        ma.quiet(&["msg", "event", "sync_result", "receipt", "typing"], QUIET)
            .await;
        mb.quiet(&["receipt", "typing", "msg"], Duration::from_millis(100))
            .await;
        mc.quiet(&["receipt", "typing", "msg"], Duration::from_millis(100))
            .await;
        // convs lists none of them.
        let convs = ma.convs().await;
        let listed: Vec<&str> = convs["convs"]
            .as_array()
            .expect("convs")
            .iter()
            .filter_map(|c| c["conv"].as_str())
            .collect();
        for conv in [&bc, &gc] {
            assert!(
                !listed.contains(&conv.as_str()),
                "{sp:?} convs of {a} lists {conv}: {convs}"
            );
        }

        // HTTP: sending as `a` into them.
        for conv in [&bc, &gc, &gonec] {
            let (st, v) = s
                .post_message(
                    json!({"from": a, "to": conv, "kind": "text", "body": "http intrude"}),
                )
                .await;
            assert_eq!(
                (st, v["error"]["code"].as_str()),
                (403, Some("not_member")),
                "HTTP as {a} into {conv}: {v}"
            );
        }
        let (st, v) = s
            .post_message(
                json!({"from": a, "to": format!("group:{g}"), "kind": "text", "body": "x"}),
            )
            .await;
        assert_eq!(st, 403, "{v}");
        // Nothing was stored anywhere.
        for (conv, was) in &before {
            assert_eq!(&stored(&s, conv).await, was, "{sp:?}: {conv} changed");
        }
        // b's read mark in the dm is untouched by a's `read`.
        let sum = mb.conv_summary(&bc).await.expect("b has the dm");
        assert_eq!(sum["read_seq"], 0, "{sum}");

        // Control: a's own dm with b works, both ways.
        let r = ma.send_text("ok1", &format!("user:{b}"), "hello").await;
        assert_eq!(r["type"], "send_ack", "{r}");
        assert_eq!(r["conv"], dm(&a, &b));
    }
}

#[tokio::test]
async fn http_routes_refuse_bad_ids_and_unknown_targets() {
    let s = Server::start(&[]).await;
    s.put_users(&["ha", "hb"]).await;
    let long = "u".repeat(65);
    let bad_ids = [long.as_str(), "bad%20id", "a%2Fb", "%C3%A9"];
    for id in bad_ids {
        for (m, p, body) in [
            ("PUT", format!("/v1/users/{id}"), Some(json!({}))),
            ("GET", format!("/v1/users/{id}"), None),
            ("DELETE", format!("/v1/users/{id}"), None),
            ("POST", format!("/v1/users/{id}/tokens"), Some(json!({}))),
            ("GET", format!("/v1/users/{id}/presence"), None),
            ("POST", format!("/v1/users/{id}/kick"), Some(json!({}))),
            ("PUT", format!("/v1/groups/{id}"), Some(json!({}))),
            ("GET", format!("/v1/groups/{id}"), None),
            ("DELETE", format!("/v1/groups/{id}"), None),
            (
                "POST",
                format!("/v1/groups/{id}/members"),
                Some(json!({"add": ["ha"]})),
            ),
            ("GET", format!("/v1/groups/{id}/members"), None),
            (
                "GET",
                format!("/v1/conversations/group:{id}/messages"),
                None,
            ),
            (
                "GET",
                format!("/v1/conversations/dm:ha:{id}/messages"),
                None,
            ),
        ] {
            let (st, v) = s.request(m, &p, body).await;
            assert!(
                st == 400 || (st == 404 && p.contains("%2F")),
                "{m} {p}: {st} {v}"
            );
        }
    }
    // Malformed conversation ids in history.
    for conv in ["dm:hb:ha", "dm:ha", "chan:x", "group:", "dm::ha"] {
        let (st, v) = s
            .request("GET", &format!("/v1/conversations/{conv}/messages"), None)
            .await;
        assert_eq!(st, 400, "{conv}: {v}");
    }
    // Unknown ids are 404 with the contract's codes, nothing created.
    for (from, to, code) in [
        ("nobody", "user:ha", "no_such_user"),
        ("ha", "group:nogroup", "no_such_group"),
        ("ha", "user:nobody", "no_such_user"),
    ] {
        let (st, v) = s
            .post_message(json!({"from": from, "to": to, "kind": "text", "body": "x"}))
            .await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some(code)), "{v}");
    }
    assert!(stored(&s, &dm("ha", "nobody")).await.is_empty());
    let (st, _) = s.request("GET", "/v1/groups/nogroup", None).await;
    assert_eq!(st, 404);
}

// ---------------------------------------------------------------------------
// Tokens and the API key
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expired_foreign_tampered_and_revoked_tokens_are_refused() {
    let s = Server::start(&[]).await;
    let other = Server::start(&[]).await;
    s.put_users(&["ta", "tb"]).await;
    other.put_user("ta").await;

    // Expired: ttl 1 s.
    let (st, v) = s
        .request("POST", "/v1/users/ta/tokens", Some(json!({"ttl_s": 1})))
        .await;
    assert_eq!(st, 200, "{v}");
    let short = v["token"].as_str().expect("token").to_string();
    let now = now_ms();
    let exp = v["expires_ts"].as_u64().expect("expires_ts");
    assert!(
        exp <= now + 1_500 && exp + 5_000 > now,
        "expires_ts {exp} vs now {now}"
    );
    tokio::time::sleep(Duration::from_millis(exp.saturating_sub(now_ms()) + 300)).await;
    for sp in SPS {
        refused(&s, sp, &short, "p", "expired token").await;
    }

    // Signed with another server's key: same user id, same shape.
    let foreign = other.token("ta", None).await;
    let good = s.token("ta", None).await;
    assert_eq!(foreign.len(), good.len(), "same format");
    for sp in SPS {
        refused(&s, sp, &foreign, "p", "another server's token").await;
    }
    // Tampered: the signature's first character, and a payload swap.
    let (payload, sig) = good.split_once('.').expect("payload.sig");
    let flipped = format!(
        "{payload}.{}{}",
        if sig.starts_with('A') { 'B' } else { 'A' },
        &sig[1..]
    );
    refused(&s, Subprotocol::Json, &flipped, "p", "tampered signature").await;
    let tb = s.token("tb", None).await;
    let (tb_payload, _) = tb.split_once('.').expect("payload.sig");
    refused(
        &s,
        Subprotocol::Json,
        &format!("{tb_payload}.{sig}"),
        "p",
        "payload of another user",
    )
    .await;
    // Bound to a device: refused for another.
    let phone = s.token("ta", Some("phone")).await;
    refused(&s, Subprotocol::Rkyv, &phone, "laptop", "other device").await;
    // Oversize token: refused without trouble.
    refused(
        &s,
        Subprotocol::Json,
        &"A".repeat(600),
        "p",
        "token over 512 bytes",
    )
    .await;

    // Deleted user: its live connection is kicked, its tokens refused, also
    // after the id is created again; new tokens work.
    let mut live = s.login(Subprotocol::Json, "ta", "live").await;
    let (st, _) = s.request("DELETE", "/v1/users/ta", None).await;
    assert_eq!(st, 204);
    let kicked = live.expect("kicked", REPLY).await;
    assert_eq!(kicked["reason"], "user_deleted", "{kicked}");
    assert_eq!(live.expect_close(REPLY).await, Some(4409));
    refused(&s, Subprotocol::Json, &good, "p", "token of a deleted user").await;
    s.put_user("ta").await;
    refused(
        &s,
        Subprotocol::Rkyv,
        &good,
        "p",
        "old token after re-creation",
    )
    .await;
    let mut fresh = s.login(Subprotocol::Json, "ta", "p").await;
    assert_eq!(fresh.ping().await["type"], "pong");
}

#[tokio::test]
async fn api_key_is_required_and_compared_exactly() {
    let s = Server::start(&[]).await;
    let mut near = API_KEY.to_string();
    near.pop();
    near.push('X');
    for (key, want) in [
        (None, 401),
        (Some(near.as_str()), 403),
        (Some(&API_KEY[..API_KEY.len() - 1]), 403),
        (Some(&*format!("{API_KEY}x")), 403),
        (Some(&*API_KEY.to_uppercase()), 403),
    ] {
        for (m, p) in [
            ("GET", "/v1/users/x"),
            ("PUT", "/v1/users/x"),
            ("POST", "/v1/messages"),
            ("GET", "/v1/conversations/dm:a:b/messages"),
            ("GET", "/v1/nothing-here"),
        ] {
            let (st, v) = s.request_raw(m, p, key, Some(b"{}".to_vec())).await;
            assert_eq!(st, want, "{m} {p} with {key:?}: {v}");
        }
    }
    // The right key passes, and the refused PUTs created nothing.
    let (st, _) = s.request("GET", "/v1/users/x", None).await;
    assert_eq!(st, 404);
}

// ---------------------------------------------------------------------------
// Input limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversize_inputs_are_refused_with_the_contracts_codes_and_nothing_is_stored() {
    let s = Server::start(&[]).await;
    s.put_users(&["la", "lb"]).await;
    let conv = dm("la", "lb");
    let id65 = "i".repeat(65);
    let id64 = "i".repeat(64);

    // --- HTTP ---
    // Ids: 64 bytes pass, 65 do not.
    let (st, v) = s
        .request("PUT", &format!("/v1/users/{id65}"), Some(json!({})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, _) = s
        .request("PUT", &format!("/v1/users/{id64}"), Some(json!({})))
        .await;
    assert_eq!(st, 200);
    // Bodies: 32 KiB passes, one more byte is 413 too_large.
    let just = "b".repeat(32 * 1024 - 2); // JSON string: two quotes
    let (st, v) = s
        .post_message(json!({"from": "la", "to": "user:lb", "kind": "text", "body": just}))
        .await;
    assert_eq!(st, 200, "{v}");
    let over = "b".repeat(32 * 1024 - 1);
    let (st, v) = s
        .post_message(json!({"from": "la", "to": "user:lb", "kind": "text", "body": over}))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    // A request body over 1 MiB.
    let huge = json!({"from": "la", "to": "user:lb", "kind": "custom", "body": {"x": "h".repeat(1024 * 1024)}});
    let (st, v) = s.post_message(huge).await;
    assert_eq!(st, 413, "{v}");
    // cmid over 64 bytes.
    let (st, v) = s
        .post_message(
            json!({"from": "la", "to": "user:lb", "kind": "text", "body": "x", "cmid": id65}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    // Unknown kind.
    let (st, _) = s
        .post_message(json!({"from": "la", "to": "user:lb", "kind": "weird", "body": "x"}))
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        stored(&s, &conv).await.len(),
        1,
        "only the 32 KiB message is stored"
    );

    // Member lists: 1,001 ids per change, 10,001 in a PUT.
    s.put_group("lg", None, &["la"]).await;
    let many: Vec<String> = (0..1001).map(|i| format!("m{i}")).collect();
    let (st, v) = s
        .request("POST", "/v1/groups/lg/members", Some(json!({"add": many})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let lots: Vec<String> = (0..10_001).map(|i| format!("m{i}")).collect();
    let (st, v) = s
        .request("PUT", "/v1/groups/lg2", Some(json!({"members": lots})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, _) = s.request("GET", "/v1/groups/lg2", None).await;
    assert_eq!(st, 404, "the refused group was not created");
    let (st, v) = s
        .request(
            "POST",
            "/v1/groups/lg/members",
            Some(json!({"add": [id65]})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (_, v) = s.request("GET", "/v1/groups/lg", None).await;
    assert_eq!(v["members_count"], 1, "{v}");
    // Page sizes.
    let (st, _) = s
        .request(
            "GET",
            &format!("/v1/conversations/{conv}/messages?limit=501"),
            None,
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .request(
            "GET",
            &format!("/v1/conversations/{conv}/messages?limit=0"),
            None,
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .request("GET", "/v1/groups/lg/members?limit=1001", None)
        .await;
    assert_eq!(st, 400);
    // Names, meta, token ttl, devices, kick reasons.
    let (st, _) = s
        .request(
            "PUT",
            "/v1/users/la",
            Some(json!({"name": "n".repeat(1025)})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .request(
            "PUT",
            "/v1/users/la",
            Some(json!({"meta": {"m": "m".repeat(64 * 1024)}})),
        )
        .await;
    assert_eq!(st, 413);
    let (st, _) = s
        .request(
            "POST",
            "/v1/users/la/tokens",
            Some(json!({"ttl_s": 2_592_001})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .request("POST", "/v1/users/la/tokens", Some(json!({"device": id65})))
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .request(
            "POST",
            "/v1/users/la/kick",
            Some(json!({"reason": "r".repeat(10_000)})),
        )
        .await;
    assert_eq!(st, 400);
    let (_, u) = s.request("GET", "/v1/users/la", None).await;
    assert!(
        u["name"].is_null() || u["name"].as_str().is_some_and(|n| n.len() <= 1024),
        "{u}"
    );

    // --- WebSocket ---
    for sp in SPS {
        let mut c = s.login(sp, "la", &format!("ws{}", tag(sp))).await;
        let r = c
            .send_msg("big", "user:lb", "text", json!("b".repeat(32 * 1024 - 1)))
            .await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("send_err"), Some("too_large")),
            "{sp:?}: {r}"
        );
        c.send(
            &json!({"type": "send", "cmid": id65, "to": "user:lb", "kind": "text", "body": "x"}),
        )
        .await;
        let r = c.expect("send_err", REPLY).await;
        assert_eq!(r["code"], "bad_request", "{sp:?} long cmid: {r}");
        let r = c
            .send_msg("longto", &format!("user:{id65}"), "text", json!("x"))
            .await;
        assert_eq!(r["code"], "bad_request", "{sp:?} long id in to: {r}");
        let r = c.send_msg("badto", "user:b c", "text", json!("x")).await;
        assert_eq!(r["code"], "bad_request", "{sp:?} bad id in to: {r}");
        let r = c
            .send_msg("longgrp", &format!("group:{id65}"), "text", json!("x"))
            .await;
        assert_eq!(r["code"], "bad_request", "{sp:?} long group id: {r}");
        for limit in [0u32, 501] {
            c.send(&json!({"type": "sync", "conv": conv, "after": 0, "limit": limit}))
                .await;
            expect_error(&mut c, "bad_request", &format!("{sp:?} sync limit {limit}")).await;
        }
        c.send(&json!({"type": "sync", "conv": format!("dm:la:{id65}"), "after": 0}))
            .await;
        expect_error(
            &mut c,
            "bad_request",
            &format!("{sp:?} sync of a long conv id"),
        )
        .await;
        c.send(&json!({"type": "typing", "to": format!("user:{id65}")}))
            .await;
        expect_error(
            &mut c,
            "bad_request",
            &format!("{sp:?} typing to a long id"),
        )
        .await;
        assert_eq!(c.ping().await["type"], "pong", "{sp:?}: still open");
    }
    // Auth with a device id over 64 bytes: bad_request, then a good auth works.
    let tok = s.token("la", None).await;
    let mut c = Client::connect(&s, Subprotocol::Json).await;
    let r = c.auth(&tok, &id65).await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{r}"
    );
    let r = c.auth(&tok, "ok").await;
    assert_eq!(r["type"], "auth_ok", "{r}");
    // A frame over 64 KiB closes with 1009.
    c.send_raw_text(json!({"type": "ping", "pad": "p".repeat(70 * 1024)}).to_string())
        .await;
    assert_eq!(c.expect_close(REPLY).await, Some(1009));
    assert_eq!(
        stored(&s, &conv).await.len(),
        1,
        "nothing refused was stored"
    );
    assert!(stored(&s, &dm("la", &id64)).await.is_empty());
}
