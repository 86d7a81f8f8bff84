//! Router tests: the real router, a fake engine, requests through `oneshot`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tern_proto::{ErrorCode, Kind};
use tower::ServiceExt as _;

use super::testing::{FakeEngine, FAKE_TS};
use super::{router, AppState};
use crate::auth::ApiKey;

const KEY: &str = "test-key";
const BODY_MAX: usize = 4096;

fn app(fake: &FakeEngine) -> Router {
    router(
        Arc::new(AppState {
            engine: fake.clone(),
        }),
        Arc::new(ApiKey::new(KEY)),
        BODY_MAX,
    )
}

struct Res {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Res {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    /// Asserts an error answer and returns its message.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json");
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{}", self.text);
        assert_eq!(v.as_object().unwrap().len(), 1);
        v["error"]["message"].as_str().unwrap().to_owned()
    }
}

async fn send(fake: &FakeEngine, req: Request<Body>) -> Res {
    let res = app(fake).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Res {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// An authorised request; `body` is sent verbatim.
async fn call(fake: &FakeEngine, method: Method, uri: &str, body: Option<&str>) -> Res {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    send(fake, req).await
}

#[tokio::test]
async fn healthz_needs_no_key() {
    let fake = FakeEngine::default();
    let res = send(&fake, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(res.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn v1_routes_need_the_key() {
    let fake = FakeEngine::default();
    let res = send(
        &fake,
        Request::get("/v1/users/alice").body(Body::empty()).unwrap(),
    )
    .await;
    res.error(401, "unauthorized");
    assert_eq!(res.headers[header::WWW_AUTHENTICATE], "Bearer");
    let req = Request::get("/v1/users/alice")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    send(&fake, req).await.error(403, "forbidden");
    // Unknown /v1 paths and wrong methods are guarded before routing.
    send(&fake, Request::get("/v1/nope").body(Body::empty()).unwrap())
        .await
        .error(401, "unauthorized");
    send(
        &fake,
        Request::post("/v1/users/alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .error(401, "unauthorized");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let fake = FakeEngine::default();
    call(&fake, Method::GET, "/nope", None)
        .await
        .error(404, "not_found");
    call(&fake, Method::GET, "/v1/users", None)
        .await
        .error(404, "not_found");
    call(&fake, Method::GET, "/v1/users/alice/", None)
        .await
        .error(404, "not_found");
    let res = call(&fake, Method::POST, "/v1/users/alice", None).await;
    res.error(405, "method_not_allowed");
    let allow = res.headers[header::ALLOW].to_str().unwrap();
    assert!(
        allow.contains("PUT") && allow.contains("DELETE") && allow.contains("GET"),
        "{allow}"
    );
    call(&fake, Method::GET, "/v1/messages", None)
        .await
        .error(405, "method_not_allowed");
    call(&fake, Method::DELETE, "/healthz", None)
        .await
        .error(405, "method_not_allowed");
}

#[tokio::test]
async fn user_upsert_get_delete() {
    let fake = FakeEngine::default();
    let res = call(
        &fake,
        Method::PUT,
        "/v1/users/alice",
        Some(r#"{"name":"Alice","meta":{"a":[1,2]}}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(
        res.json(),
        json!({"user":"alice","name":"Alice","meta":{"a":[1,2]},"created_ts":FAKE_TS})
    );

    // Bare PUT: all fields optional; unset ones are null.
    let res = call(&fake, Method::PUT, "/v1/users/bob", None).await;
    assert_eq!(
        res.json(),
        json!({"user":"bob","name":null,"meta":null,"created_ts":FAKE_TS})
    );
    let res = call(
        &fake,
        Method::PUT,
        "/v1/users/carol",
        Some(r#"{"meta":null,"extra":1}"#),
    )
    .await;
    assert_eq!(res.json()["meta"], Value::Null);
    assert!(fake
        .0
        .lock()
        .unwrap()
        .users
        .values()
        .all(|u| u.user.as_str() != "carol" || u.meta.is_none()));

    let res = call(&fake, Method::GET, "/v1/users/alice", None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["meta"], json!({"a":[1,2]}));

    let res = call(&fake, Method::DELETE, "/v1/users/alice", None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert!(res.text.is_empty());
    call(&fake, Method::DELETE, "/v1/users/alice", None)
        .await
        .error(404, "no_such_user");
    call(&fake, Method::GET, "/v1/users/alice", None)
        .await
        .error(404, "no_such_user");
}

#[tokio::test]
async fn user_bad_input_is_400() {
    let fake = FakeEngine::default();
    let long = "x".repeat(65);
    for uri in [
        "/v1/users/al%20ice",
        "/v1/users/al:ice",
        &format!("/v1/users/{long}"),
    ] {
        let msg = call(&fake, Method::GET, uri, None)
            .await
            .error(400, "bad_request");
        assert!(msg.contains("user id"), "{uri}: {msg}");
    }
    for body in [r#"{"name":1}"#, r#"{"name":"#, "[]", r#""x""#] {
        call(&fake, Method::PUT, "/v1/users/alice", Some(body))
            .await
            .error(400, "bad_request");
    }
    let long_name = format!(
        r#"{{"name":"{}"}}"#,
        "n".repeat(super::users::NAME_BYTES_MAX + 1)
    );
    assert!(
        long_name.len() < BODY_MAX,
        "must fail on the name bound, not the body limit"
    );
    call(&fake, Method::PUT, "/v1/users/alice", Some(&long_name))
        .await
        .error(400, "bad_request");
    assert!(fake.0.lock().unwrap().users.is_empty());
}

#[tokio::test]
async fn oversize_body_is_413() {
    let fake = FakeEngine::default();
    let big = format!(r#"{{"name":"{}"}}"#, "n".repeat(BODY_MAX));
    // With Content-Length (checked up front) ...
    call(&fake, Method::PUT, "/v1/users/alice", Some(&big))
        .await
        .error(413, "too_large");
    // ... and streamed without one (checked while reading).
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(big[..100].to_owned()), Ok(big[100..].to_owned())];
    let req = Request::put("/v1/users/alice")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let msg = send(&fake, req).await.error(413, "too_large");
    assert!(msg.contains(&BODY_MAX.to_string()), "{msg}");
}

#[tokio::test]
async fn tokens() {
    let fake = FakeEngine::default();
    call(&fake, Method::PUT, "/v1/users/alice", None).await;

    let res = call(&fake, Method::POST, "/v1/users/alice/tokens", None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(
        res.json(),
        json!({"token":"tok.alice","expires_ts":FAKE_TS + 86_400_000})
    );

    let res = call(
        &fake,
        Method::POST,
        "/v1/users/alice/tokens",
        Some(r#"{"device":"phone","ttl_s":2592000}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    {
        let st = fake.0.lock().unwrap();
        assert_eq!(st.mints.len(), 2);
        assert_eq!(st.mints[0].1, None);
        assert_eq!(st.mints[0].2, 86_400);
        assert_eq!(st.mints[1].1.as_ref().map(|d| d.as_str()), Some("phone"));
        assert_eq!(st.mints[1].2, 2_592_000);
    }

    for body in [
        r#"{"ttl_s":0}"#,
        r#"{"ttl_s":2592001}"#,
        r#"{"ttl_s":-1}"#,
        r#"{"ttl_s":1.5}"#,
        r#"{"ttl_s":"60"}"#,
        r#"{"device":""}"#,
        r#"{"device":"bad device"}"#,
        r#"{"device":7}"#,
    ] {
        let msg = call(&fake, Method::POST, "/v1/users/alice/tokens", Some(body))
            .await
            .error(400, "bad_request");
        assert!(!msg.is_empty());
    }
    call(&fake, Method::POST, "/v1/users/nobody/tokens", None)
        .await
        .error(404, "no_such_user");
    call(&fake, Method::POST, "/v1/users/no%20body/tokens", None)
        .await
        .error(400, "bad_request");
    assert_eq!(fake.0.lock().unwrap().mints.len(), 2);
}

#[tokio::test]
async fn send_message() {
    let fake = FakeEngine::default();
    let res = call(
        &fake,
        Method::POST,
        "/v1/messages",
        Some(r#"{"from":"alice","to":"user:bob","kind":"text","body":"hi","cmid":"c1"}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(
        res.json(),
        json!({"conv":"dm:alice:bob","seq":1,"ts":FAKE_TS + 1})
    );

    let res = call(
        &fake,
        Method::POST,
        "/v1/messages",
        Some(r#"{"to":"group:g1","kind":"image","body":{"url":"u","size":3}}"#),
    )
    .await;
    assert_eq!(
        res.json(),
        json!({"conv":"group:g1","seq":2,"ts":FAKE_TS + 2})
    );

    let st = fake.0.lock().unwrap();
    let a = &st.sends[0];
    assert_eq!(a.from.as_ref().map(|u| u.as_str()), Some("alice"));
    assert_eq!(
        (a.to.as_str(), a.kind, a.body.as_str(), a.cmid.as_deref()),
        ("user:bob", Kind::Text, "\"hi\"", Some("c1"))
    );
    let b = &st.sends[1];
    assert_eq!((b.from.as_ref(), b.cmid.as_ref()), (None, None));
    // The body is passed on as the client's text.
    assert_eq!(b.body.as_str(), r#"{"url":"u","size":3}"#);
}

#[tokio::test]
async fn send_bad_input_is_400_or_413() {
    let fake = FakeEngine::default();
    for (body, needle) in [
        (r#"{"kind":"text","body":"x"}"#, "missing field `to`"),
        (r#"{"to":"user:bob","body":"x"}"#, "missing field `kind`"),
        (r#"{"to":"user:bob","kind":"text"}"#, "missing field `body`"),
        (
            r#"{"to":"user:bob","kind":"gif","body":"x"}"#,
            "unknown variant",
        ),
        (r#"{"to":"bob","kind":"text","body":"x"}"#, "to:"),
        (r#"{"to":"dm:bob:alice","kind":"text","body":"x"}"#, "to:"),
        (r#"{"to":"user:b b","kind":"text","body":"x"}"#, "to:"),
        (
            r#"{"from":"a:b","to":"user:bob","kind":"text","body":"x"}"#,
            "from:",
        ),
        (
            r#"{"to":"user:bob","kind":"text","body":"x","cmid":""}"#,
            "cmid:",
        ),
        (
            r#"{"to":"user:bob","kind":"text","body":{"t":"x"}}"#,
            "JSON string",
        ),
        (
            r#"{"to":"user:bob","kind":"text","body":"x","from":5}"#,
            "invalid type",
        ),
        ("not json", "JSON object"),
        (r#"{"to":"user:bob""#, "invalid JSON"),
    ] {
        let msg = call(&fake, Method::POST, "/v1/messages", Some(body))
            .await
            .error(400, "bad_request");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let long_cmid = format!(
        r#"{{"to":"user:bob","kind":"text","body":"x","cmid":"{}"}}"#,
        "c".repeat(65)
    );
    call(&fake, Method::POST, "/v1/messages", Some(&long_cmid))
        .await
        .error(400, "bad_request");
    assert!(fake.0.lock().unwrap().sends.is_empty());
}

#[tokio::test]
async fn send_body_over_32_kib_is_413() {
    let fake = FakeEngine::default();
    let big_app = router(
        Arc::new(AppState {
            engine: fake.clone(),
        }),
        Arc::new(ApiKey::new(KEY)),
        crate::BODY_BYTES_MAX_DEFAULT,
    );
    let text = "x".repeat(tern_proto::BODY_BYTES_MAX);
    let body = json!({"to":"user:bob","kind":"text","body":text}).to_string();
    let req = Request::post("/v1/messages")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from(body))
        .unwrap();
    let res = big_app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fake.0.lock().unwrap().sends.is_empty());
}

#[tokio::test]
async fn engine_errors_map_to_statuses() {
    let fake = FakeEngine::default();
    // A code the engine returns on the send path.
    let res = call(
        &fake,
        Method::POST,
        "/v1/messages",
        Some(r#"{"to":"group:nope","kind":"text","body":"x"}"#),
    )
    .await;
    res.error(404, "no_such_group");
    for (code, status) in [
        (ErrorCode::Unavailable, 503),
        (ErrorCode::NotMember, 403),
        (ErrorCode::RateLimited, 429),
        (ErrorCode::Rejected, 409),
        (ErrorCode::TooLarge, 413),
    ] {
        fake.0.lock().unwrap().fail = Some(code);
        let msg = call(
            &fake,
            Method::POST,
            "/v1/messages",
            Some(r#"{"to":"user:b","kind":"text","body":"x"}"#),
        )
        .await
        .error(status, code.as_str());
        assert_eq!(msg, format!("fake {code}"));
        call(&fake, Method::GET, "/v1/users/alice", None)
            .await
            .error(status, code.as_str());
    }
}

#[tokio::test]
async fn history() {
    let fake = FakeEngine::default();
    for i in 0..3 {
        let body = json!({"from":"alice","to":"user:bob","kind":"text","body":format!("m{i}"),"cmid":format!("c{i}")});
        let res = call(&fake, Method::POST, "/v1/messages", Some(&body.to_string())).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    let res = call(
        &fake,
        Method::GET,
        "/v1/conversations/dm:alice:bob/messages",
        None,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let v = res.json();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["messages"][0],
        json!({"type":"msg","conv":"dm:alice:bob","seq":1,"from":"alice","device":"","cmid":"c0","kind":"text","body":"m0","ts":FAKE_TS + 1})
    );

    let v = call(
        &fake,
        Method::GET,
        "/v1/conversations/dm:alice:bob/messages?after=1&limit=1",
        None,
    )
    .await
    .json();
    assert_eq!(v["has_more"], true);
    assert_eq!(v["messages"][0]["seq"], 2);
    // Empty values mean "default"; unknown parameters are ignored.
    let v = call(
        &fake,
        Method::GET,
        "/v1/conversations/dm:alice:bob/messages?after=&limit=&x=1",
        None,
    )
    .await
    .json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    call(
        &fake,
        Method::GET,
        "/v1/conversations/dm:alice:bob/messages?limit=500",
        None,
    )
    .await;
    {
        let st = fake.0.lock().unwrap();
        let calls: Vec<(String, u64, u32)> = st
            .history_calls
            .iter()
            .map(|(c, a, l)| (c.to_string(), *a, *l))
            .collect();
        assert_eq!(
            calls,
            [
                ("dm:alice:bob".into(), 0, 100),
                ("dm:alice:bob".into(), 1, 1),
                ("dm:alice:bob".into(), 0, 100),
                ("dm:alice:bob".into(), 0, 500)
            ]
        );
    }

    for q in ["limit=0", "limit=501", "limit=x", "after=-1", "after=1.0"] {
        let msg = call(
            &fake,
            Method::GET,
            &format!("/v1/conversations/dm:alice:bob/messages?{q}"),
            None,
        )
        .await
        .error(400, "bad_request");
        assert!(msg.contains("after") || msg.contains("limit"), "{q}: {msg}");
    }
    for conv in ["dm:bob:alice", "alice", "group:", "dm:a", "group:a%20b"] {
        call(
            &fake,
            Method::GET,
            &format!("/v1/conversations/{conv}/messages"),
            None,
        )
        .await
        .error(400, "bad_request");
    }
    assert_eq!(fake.0.lock().unwrap().history_calls.len(), 4);
}
