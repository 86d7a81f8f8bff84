//! The business HTTP API of PROTOCOL.md: health, API keys, users, tokens,
//! sends (from a user and from `system`), history paging, error shape, id
//! validation, the body limit, presence/kick, and SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tern_proto::Subprotocol;

/// Asserts `{"error":{"code":..,"message":..}}`, and the code if given.
fn assert_error(v: &Value, code: Option<&str>, what: &str) {
    let e = &v["error"];
    assert!(
        e["code"].is_string(),
        "{what}: error body without code: {v}"
    );
    assert!(
        e["message"].is_string(),
        "{what}: error body without message: {v}"
    );
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{what}: {v}");
    }
}

#[tokio::test]
async fn healthz_metrics_and_openapi() {
    let s = Server::start(&[]).await;
    let (st, v) = s.request_raw("GET", "/healthz", None, None).await;
    assert_eq!(st, 200, "GET /healthz: {v}");
    assert_eq!(v, json!({ "status": "ok" }));
    let (st, v) = s.request_raw("GET", "/metrics", None, None).await;
    assert_eq!(st, 200, "GET /metrics (no key): {v}");
    assert!(v.is_string(), "Prometheus text, not JSON: {v}");
    let (st, v) = s.request_raw("GET", "/openapi.json", None, None).await;
    assert_eq!(st, 200, "GET /openapi.json: {v}");
    assert!(
        v["openapi"].as_str().is_some_and(|o| o.starts_with('3')),
        "{v}"
    );
    assert!(v["paths"].is_object(), "{v}");
}

#[tokio::test]
async fn api_key_is_required_on_v1_routes() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let routes = [
        ("GET", "/v1/users/alice", None),
        ("PUT", "/v1/users/bob", Some(json!({}))),
        ("DELETE", "/v1/users/alice", None),
        ("POST", "/v1/users/alice/tokens", Some(json!({}))),
        (
            "POST",
            "/v1/messages",
            Some(json!({ "to": "user:alice", "kind": "text", "body": "x" })),
        ),
        ("GET", "/v1/conversations/dm:alice:alice/messages", None),
        ("GET", "/v1/users/alice/presence", None),
    ];
    for (m, path, body) in routes {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        let (st, v) = s.request_raw(m, path, None, bytes.clone()).await;
        assert_eq!(st, 401, "{m} {path} without key: {v}");
        assert_error(&v, None, "no key");
        let (st, v) = s.request_raw(m, path, Some("wrongkey"), bytes).await;
        assert_eq!(st, 403, "{m} {path} with a wrong key: {v}");
        assert_error(&v, None, "wrong key");
    }
    // A malformed Authorization header is "without a key".
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(s.url("/v1/users/alice"))
        .header("Authorization", "Basic dGVzdGtleQ==")
        .send()
        .await
        .expect("request");
    assert!(
        matches!(resp.status().as_u16(), 401 | 403),
        "{}",
        resp.status()
    );
    // Nothing above changed anything.
    let (st, _) = s.request("GET", "/v1/users/alice", None).await;
    assert_eq!(st, 200);
    let (st, _) = s.request("GET", "/v1/users/bob", None).await;
    assert_eq!(st, 404);
    let h = s.history("dm:alice:alice", 0, None).await;
    assert_eq!(h["messages"], json!([]));
}

#[tokio::test]
async fn user_upsert_get_delete() {
    let s = Server::start(&[]).await;
    let meta = json!({ "avatar": "https://x/a.png", "tags": ["a", "b"], "n": 1 });
    let (st, v) = s
        .request(
            "PUT",
            "/v1/users/alice",
            Some(json!({ "name": "Alice", "meta": meta })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["name"], "Alice");
    assert_eq!(v["meta"], meta);
    assert_ts_recent(&v["created_ts"], "created_ts");
    let created = v["created_ts"].clone();

    let (st, got) = s.request("GET", "/v1/users/alice", None).await;
    assert_eq!(st, 200);
    assert_eq!(got, v, "GET returns what PUT answered");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let (st, v2) = s
        .request("PUT", "/v1/users/alice", Some(json!({ "name": "Alice B" })))
        .await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["name"], "Alice B");
    assert_eq!(v2["created_ts"], created, "upsert keeps created_ts");
    let (_, got) = s.request("GET", "/v1/users/alice", None).await;
    assert_eq!(got["name"], "Alice B");
    assert_eq!(got["created_ts"], created);

    // No body fields at all is a valid upsert.
    let (st, v) = s.request("PUT", "/v1/users/bob", Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user"], "bob");

    let (st, v) = s.request("DELETE", "/v1/users/alice", None).await;
    assert_eq!(st, 204, "{v}");
    assert_eq!(v, Value::Null, "204 has no body");
    let (st, v) = s.request("GET", "/v1/users/alice", None).await;
    assert_eq!(st, 404);
    assert_error(&v, None, "GET deleted user");
    let (st, v) = s.request("GET", "/v1/users/nobody", None).await;
    assert_eq!(st, 404);
    assert_error(&v, None, "GET unknown user");

    // Re-created: a new user with a new created_ts.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let v = s.put_user("alice").await;
    assert!(v["created_ts"].as_u64() >= created.as_u64(), "{v}");
}

#[tokio::test]
async fn tokens_ttl_bounds_and_unknown_user() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    const DAY_S: u64 = 86_400;
    const MAX_TTL_S: u64 = 30 * DAY_S;

    let before = now_ms();
    let (st, v) = s
        .request("POST", "/v1/users/alice/tokens", Some(json!({})))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    let exp = v["expires_ts"].as_u64().expect("expires_ts");
    assert!(
        exp >= before + DAY_S * 1000 - 2_000 && exp <= now_ms() + DAY_S * 1000 + 2_000,
        "default ttl 1 day: {v}"
    );

    let (st, v) = s
        .request(
            "POST",
            "/v1/users/alice/tokens",
            Some(json!({ "device": "phone", "ttl_s": MAX_TTL_S })),
        )
        .await;
    assert_eq!(st, 200, "30 days is allowed: {v}");
    let exp = v["expires_ts"].as_u64().expect("expires_ts");
    assert!(exp.abs_diff(now_ms() + MAX_TTL_S * 1000) < 10_000, "{v}");

    for ttl in [json!(MAX_TTL_S + 1), json!(0), json!(-5), json!("long")] {
        let (st, v) = s
            .request(
                "POST",
                "/v1/users/alice/tokens",
                Some(json!({ "ttl_s": ttl })),
            )
            .await;
        assert_eq!(st, 400, "ttl_s {ttl}: {v}");
        assert_error(&v, None, "ttl");
    }
    let (st, v) = s
        .request(
            "POST",
            "/v1/users/alice/tokens",
            Some(json!({ "device": "bad device!" })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s
        .request("POST", "/v1/users/nobody/tokens", Some(json!({})))
        .await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, Some("no_such_user"), "token for unknown user");
    // Two tokens are both valid.
    let t1 = s.token("alice", None).await;
    let t2 = s.token("alice", None).await;
    for (t, d) in [(t1, "a"), (t2, "b")] {
        let mut c = Client::connect(&s, Subprotocol::Json).await;
        assert_eq!(c.auth(&t, d).await["type"], "auth_ok");
    }
}

#[tokio::test]
async fn post_message_from_user_is_delivered_over_websocket() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let mut bob_j = s.login(Subprotocol::Json, "bob", "phone").await;
    let mut bob_r = s.login(Subprotocol::Rkyv, "bob", "tablet").await;
    let mut alice = s.login(Subprotocol::Json, "alice", "phone").await;

    let body = json!({ "from": "alice", "to": "user:bob", "kind": "text", "body": "via http", "cmid": "h1" });
    let (st, v) = s.post_message(body.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["conv"], "dm:alice:bob");
    assert_eq!(v["seq"], 1);
    assert_ts_recent(&v["ts"], "send ts");
    for c in [&mut bob_j, &mut bob_r, &mut alice] {
        // The sender has no sending device here, so all of alice's devices get it.
        let m = c.expect_msg("dm:alice:bob", 1).await;
        assert_eq!(m["from"], "alice", "{m}");
        assert_eq!(m["cmid"], "h1");
        assert_eq!(m["kind"], "text");
        assert_eq!(m["body"], "via http");
        assert_eq!(m["ts"], v["ts"]);
        assert!(m["device"].is_string(), "{m}");
    }
    // Same cmid: the original answer, nothing new stored or pushed.
    let (st, again) = s.post_message(body).await;
    assert_eq!(st, 200);
    assert_eq!(again, v);
    bob_j.quiet(&["msg"], QUIET).await;

    // Same membership rules as the user.
    s.put_user("carol").await;
    let (st, e) = s
        .post_message(json!({ "from": "alice", "to": "dm:bob:carol", "kind": "text", "body": "x" }))
        .await;
    assert_eq!(st, 403, "{e}");
    assert_error(&e, Some("not_member"), "from alice to bob+carol");
    let (st, e) = s
        .post_message(json!({ "from": "alice", "to": "user:nobody", "kind": "text", "body": "x" }))
        .await;
    assert_eq!(st, 404, "{e}");
    assert_error(&e, Some("no_such_user"), "to unknown user");
    let (st, e) = s
        .post_message(json!({ "from": "nobody", "to": "user:bob", "kind": "text", "body": "x" }))
        .await;
    assert_eq!(st, 404, "{e}");
    assert_error(&e, Some("no_such_user"), "from unknown user");
    let (st, e) = s.post_message(json!({ "from": "alice", "to": "user:bob", "kind": "text", "body": "y".repeat(40 * 1024) })).await;
    assert_eq!(st, 413, "a body over 32 KiB: {e}");
    assert_error(&e, Some("too_large"), "too large");
    bob_j.quiet(&["msg"], QUIET).await;
}

#[tokio::test]
async fn post_message_without_from_is_from_system() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let mut alice = s.login(Subprotocol::Rkyv, "alice", "phone").await;
    let mut bob = s.login(Subprotocol::Json, "bob", "phone").await;

    // To an existing dm: both members get it from "system", device "".
    let (st, v) = s
        .post_message(json!({ "to": "dm:alice:bob", "kind": "custom", "body": { "notice": 1 } }))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["conv"], "dm:alice:bob");
    for c in [&mut alice, &mut bob] {
        let m = c
            .expect_msg("dm:alice:bob", v["seq"].as_u64().expect("seq"))
            .await;
        assert_eq!(m["from"], "system", "{m}");
        assert_eq!(m["device"], "", "{m}");
        assert_eq!(m["body"], json!({ "notice": 1 }));
        assert!(
            m["cmid"].as_str().is_some_and(|c| !c.is_empty()),
            "the server makes a cmid up: {m}"
        );
    }

    // To a user: the dm between that user and `system` (PROTOCOL leaves the
    // conv open; `dm:<user>:system` sorted like any dm is the choice made).
    let (st, v) = s
        .post_message(json!({ "to": "user:bob", "kind": "text", "body": "welcome" }))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["conv"], "dm:bob:system", "{v}");
    let conv = v["conv"].as_str().expect("conv").to_string();
    let m = bob.expect_msg(&conv, v["seq"].as_u64().expect("seq")).await;
    assert_eq!(m["from"], "system");
    assert_eq!(m["device"], "");
    assert_eq!(m["body"], "welcome");
    alice.quiet(&["msg"], QUIET).await;

    // Without cmid nothing is deduplicated: the same request twice is two messages.
    let req = json!({ "to": "dm:alice:bob", "kind": "text", "body": "twice" });
    let (_, x) = s.post_message(req.clone()).await;
    let (_, y) = s.post_message(req).await;
    assert_eq!(y["seq"], x["seq"].as_u64().expect("seq") + 1, "{x} {y}");

    // With a cmid, system sends are deduplicated like any other.
    let req = json!({ "to": "dm:alice:bob", "kind": "text", "body": "once", "cmid": "sys-1" });
    let (_, x) = s.post_message(req.clone()).await;
    let (_, y) = s.post_message(req).await;
    assert_eq!(x, y);
}

#[tokio::test]
async fn history_pages_in_order() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let mut bob = s.login(Subprotocol::Json, "bob", "phone").await;
    let mut pushed = Vec::new();
    for i in 1..=7u64 {
        let (st, v) = s
            .post_message(json!({ "from": "alice", "to": "user:bob", "kind": "text", "body": format!("p{i}"), "cmid": format!("p{i}") }))
            .await;
        assert_eq!(st, 200, "{v}");
        pushed.push(bob.expect_msg("dm:alice:bob", i).await);
    }
    bob.ack("dm:alice:bob", 7).await;
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("type");
        }
        v
    };
    let page = s.history("dm:alice:bob", 0, Some(3)).await;
    let msgs = page["messages"].as_array().expect("messages");
    assert_eq!(
        msgs.iter().map(strip).collect::<Vec<_>>(),
        pushed[0..3].iter().map(strip).collect::<Vec<_>>()
    );
    assert_eq!(page["has_more"], true);
    let page = s.history("dm:alice:bob", 3, Some(3)).await;
    assert_eq!(
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].clone())
            .collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert_eq!(page["has_more"], true);
    let page = s.history("dm:alice:bob", 6, Some(3)).await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 1);
    assert_eq!(page["messages"][0]["body"], "p7");
    assert_eq!(page["has_more"], false);
    let page = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 7);
    assert_eq!(page["has_more"], false);
    let page = s.history("dm:alice:bob", 7, None).await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["has_more"], false);

    for q in ["after=x", "after=-1", "limit=abc"] {
        let (st, v) = s
            .request(
                "GET",
                &format!("/v1/conversations/dm:alice:bob/messages?{q}"),
                None,
            )
            .await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_error(&v, None, q);
    }
}

#[tokio::test]
async fn bad_ids_and_bad_bodies_are_400() {
    let s = Server::start(&[]).await;
    s.put_user("alice").await;
    let long = "a".repeat(65);
    for id in ["bad%20id", "bad!", "b%C3%A9b", long.as_str(), "a%2Fb"] {
        let (st, v) = s
            .request("PUT", &format!("/v1/users/{id}"), Some(json!({})))
            .await;
        assert_eq!(st, 400, "PUT user {id}: {v}");
        assert_error(&v, Some("bad_request"), id);
        let (st, v) = s
            .request("POST", &format!("/v1/users/{id}/tokens"), Some(json!({})))
            .await;
        assert_eq!(st, 400, "token for {id}: {v}");
    }
    let ok = "A-z_0.9@x".to_string() + &"b".repeat(55);
    assert_eq!(ok.len(), 64);
    s.put_user(&ok).await;

    for conv in [
        "dm:bob:alice",
        "dm:alice",
        "nope",
        "dm:alice:b%20b",
        "group:",
    ] {
        let (st, v) = s
            .request("GET", &format!("/v1/conversations/{conv}/messages"), None)
            .await;
        assert_eq!(st, 400, "history of {conv}: {v}");
        assert_error(&v, Some("bad_request"), conv);
    }
    for (what, body) in [
        ("no to", json!({ "kind": "text", "body": "x" })),
        (
            "bad kind",
            json!({ "to": "user:alice", "kind": "video", "body": "x" }),
        ),
        ("no body", json!({ "to": "user:alice", "kind": "text" })),
        (
            "bad target",
            json!({ "to": "dm:bob:alice", "kind": "text", "body": "x" }),
        ),
        (
            "bad from",
            json!({ "from": "a b", "to": "user:alice", "kind": "text", "body": "x" }),
        ),
        (
            "empty cmid",
            json!({ "to": "user:alice", "kind": "text", "body": "x", "cmid": "" }),
        ),
    ] {
        let (st, v) = s.post_message(body).await;
        assert_eq!(st, 400, "{what}: {v}");
        assert_error(&v, None, what);
    }
    let (st, v) = s
        .request_raw(
            "POST",
            "/v1/messages",
            Some(API_KEY),
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_error(&v, None, "malformed JSON");
    let (st, v) = s
        .request_raw("PUT", "/v1/users/bob", Some(API_KEY), Some(b"[1]".to_vec()))
        .await;
    assert_eq!(st, 400, "{v}");
    // Nothing was stored by the refused sends.
    let h = s.history("dm:alice:alice", 0, None).await;
    assert_eq!(h["messages"], json!([]));
}

#[tokio::test]
async fn body_over_1_mib_is_413() {
    let s = Server::start(&[]).await;
    let meta = "m".repeat(1024 * 1024 + 1024);
    let body = serde_json::to_vec(&json!({ "name": "x", "meta": { "blob": meta } })).expect("json");
    let (st, v) = s
        .request_raw("PUT", "/v1/users/alice", Some(API_KEY), Some(body))
        .await;
    assert_eq!(st, 413, "{v}");
    assert_error(&v, None, "413");
    let (st, _) = s.request("GET", "/v1/users/alice", None).await;
    assert_eq!(st, 404, "the oversize PUT stored nothing");
    // The server is fine afterwards.
    s.put_user("alice").await;
}

#[tokio::test]
async fn presence_and_kick() {
    let s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let (st, v) = s.request("GET", "/v1/users/alice/presence", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({ "user": "alice", "online": false, "devices": [] })
    );

    let before = now_ms();
    let mut phone = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut tablet = s.login(Subprotocol::Rkyv, "alice", "tablet").await;
    let (_, v) = s.request("GET", "/v1/users/alice/presence", None).await;
    assert_eq!(v["user"], "alice");
    assert_eq!(v["online"], true, "{v}");
    let mut devs: Vec<&str> = v["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device"].as_str().expect("device"))
        .collect();
    devs.sort();
    assert_eq!(devs, ["phone", "tablet"]);
    for d in v["devices"].as_array().expect("devices") {
        let since = d["since_ts"].as_u64().expect("since_ts");
        assert!(since + 1_000 >= before && since <= now_ms() + 1_000, "{d}");
    }

    let (st, v) = s
        .request(
            "POST",
            "/v1/users/alice/kick",
            Some(json!({ "device": "phone", "reason": "bye" })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({ "kicked": 1 }));
    let k = phone.expect("kicked", REPLY).await;
    assert_eq!(k["reason"], "bye");
    assert_eq!(phone.expect_close(REPLY).await, Some(4409));
    tablet.ping().await;

    let (_, v) = s.request("GET", "/v1/users/alice/presence", None).await;
    let devs: Vec<&str> = v["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device"].as_str().expect("device"))
        .collect();
    assert_eq!(devs, ["tablet"], "{v}");

    let (_, v) = s
        .request("POST", "/v1/users/alice/kick", Some(json!({})))
        .await;
    assert_eq!(v, json!({ "kicked": 1 }));
    tablet.expect("kicked", REPLY).await;
    assert_eq!(tablet.expect_close(REPLY).await, Some(4409));
    let (_, v) = s
        .request("POST", "/v1/users/bob/kick", Some(json!({})))
        .await;
    assert_eq!(v, json!({ "kicked": 0 }));
    let (_, v) = s.request("GET", "/v1/users/alice/presence", None).await;
    assert_eq!(v["online"], false, "{v}");
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let mut s = Server::start(&[]).await;
    s.put_users(&["alice", "bob"]).await;
    let mut a = s.login(Subprotocol::Json, "alice", "phone").await;
    let mut b = s.login(Subprotocol::Rkyv, "bob", "phone").await;
    // A send right before the signal is durable: acked means stored.
    let ack = a.send_text("last", "user:bob", "bye").await;
    b.expect_msg("dm:alice:bob", 1).await;

    // Read the sockets while the server shuts down, so our close replies
    // reach it and nothing waits on us.
    let (status, ca, cb) = tokio::join!(
        s.sigterm(SHUTDOWN),
        a.expect_close(SHUTDOWN),
        b.expect_close(SHUTDOWN)
    );
    let status =
        status.unwrap_or_else(|| panic!("not exited {SHUTDOWN:?} after SIGTERM\n{}", s.logs()));
    assert_eq!(ca, Some(1001), "json client close code");
    assert_eq!(cb, Some(1001), "rkyv client close code");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        s.logs()
    );

    s.restart().await;
    let h = s.history("dm:alice:bob", 0, None).await;
    assert_eq!(h["messages"][0]["seq"], ack["seq"]);
    assert_eq!(h["messages"][0]["ts"], ack["ts"]);
}
