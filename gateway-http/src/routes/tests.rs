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
            counters: Arc::default(),
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
            counters: Arc::default(),
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

// ---- groups, presence, kick, metrics, openapi ----

/// Users the group tests may add.
fn with_users(fake: &FakeEngine, names: &[&str]) {
    let mut st = fake.0.lock().unwrap();
    for n in names {
        let user = tern_proto::UserId::parse(n).unwrap();
        st.users.insert(
            user.clone(),
            tern_engine::UserRecord {
                user,
                name: None,
                meta: None,
                created_ts: FAKE_TS,
            },
        );
    }
}

fn member_names(fake: &FakeEngine, group: &str) -> Vec<String> {
    let st = fake.0.lock().unwrap();
    st.groups
        .get(group)
        .map(|(_, set)| set.iter().map(|u| u.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn group_routes_need_the_key() {
    let fake = FakeEngine::default();
    for (method, uri) in [
        (Method::PUT, "/v1/groups/g1"),
        (Method::GET, "/v1/groups/g1"),
        (Method::DELETE, "/v1/groups/g1"),
        (Method::POST, "/v1/groups/g1/members"),
        (Method::GET, "/v1/groups/g1/members"),
        (Method::GET, "/v1/users/alice/presence"),
        (Method::POST, "/v1/users/alice/kick"),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        send(&fake, req).await.error(401, "unauthorized");
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .unwrap();
        send(&fake, req).await.error(403, "forbidden");
    }
    let st = fake.0.lock().unwrap();
    assert!(st.groups.is_empty() && st.kicks.is_empty());
}

#[tokio::test]
async fn group_create_read_update_delete() {
    let fake = FakeEngine::default();
    with_users(&fake, &["alice", "bob", "carol"]);
    let res = call(
        &fake,
        Method::PUT,
        "/v1/groups/g1",
        Some(r#"{"name":"Team","members":["bob","alice"]}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(
        res.json(),
        json!({"group":"g1","name":"Team","members_count":2,"created_ts":FAKE_TS})
    );
    let res = call(&fake, Method::GET, "/v1/groups/g1", None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["members_count"], 2);

    // Name only: members unchanged. Empty body: nothing changes.
    let v = call(
        &fake,
        Method::PUT,
        "/v1/groups/g1",
        Some(r#"{"name":"T2"}"#),
    )
    .await
    .json();
    assert_eq!(
        (v["name"].as_str(), v["members_count"].as_u64()),
        (Some("T2"), Some(2))
    );
    let v = call(&fake, Method::PUT, "/v1/groups/g1", None).await.json();
    assert_eq!(v["name"], "T2");
    // Members replace the list.
    let v = call(
        &fake,
        Method::PUT,
        "/v1/groups/g1",
        Some(r#"{"members":["carol"]}"#),
    )
    .await
    .json();
    assert_eq!(v["members_count"], 1);
    assert_eq!(member_names(&fake, "g1"), ["carol"]);
    // A group without a name answers `"name": null`.
    let v = call(&fake, Method::PUT, "/v1/groups/g2", None).await.json();
    assert_eq!(
        v,
        json!({"group":"g2","name":null,"members_count":0,"created_ts":FAKE_TS})
    );

    let res = call(&fake, Method::DELETE, "/v1/groups/g1", None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert!(res.text.is_empty());
    call(&fake, Method::DELETE, "/v1/groups/g1", None)
        .await
        .error(404, "no_such_group");
    let msg = call(&fake, Method::GET, "/v1/groups/g1", None)
        .await
        .error(404, "no_such_group");
    assert!(msg.contains("g1"), "{msg}");
}

#[tokio::test]
async fn group_put_bad_input() {
    let fake = FakeEngine::default();
    with_users(&fake, &["alice"]);
    let long_name = json!({ "name": "n".repeat(1025) }).to_string();
    for (uri, body, needle) in [
        ("/v1/groups/g%201", "{}", "group id"),
        ("/v1/groups/g1", long_name.as_str(), "name"),
        ("/v1/groups/g1", r#"{"members":"alice"}"#, "invalid type"),
        (
            "/v1/groups/g1",
            r#"{"members":["alice","b b"]}"#,
            "members[1]",
        ),
        ("/v1/groups/g1", r#"{"members":[""]}"#, "members[0]"),
        ("/v1/groups/g1", r#"{"name":5}"#, "invalid type"),
        ("/v1/groups/g1", "[]", "JSON object"),
    ] {
        let msg = call(&fake, Method::PUT, uri, Some(body))
            .await
            .error(400, "bad_request");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // An unknown member: 404 and nothing created.
    call(
        &fake,
        Method::PUT,
        "/v1/groups/g1",
        Some(r#"{"members":["alice","zed"]}"#),
    )
    .await
    .error(404, "no_such_user");
    assert!(fake.0.lock().unwrap().groups.is_empty());
}

#[tokio::test]
async fn group_put_members_bound() {
    let fake = FakeEngine::default();
    let names: Vec<String> = (0..10_001).map(|i| format!("u{i}")).collect();
    {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        with_users(&fake, &refs);
    }
    let app = router(
        Arc::new(AppState {
            engine: fake.clone(),
            counters: Arc::default(),
        }),
        Arc::new(ApiKey::new(KEY)),
        crate::BODY_BYTES_MAX_DEFAULT,
    );
    let put = |members: &[String]| {
        Request::put("/v1/groups/big")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Body::from(json!({ "members": members }).to_string()))
            .unwrap()
    };
    let res = app.clone().oneshot(put(&names)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("10000"),
        "{v}"
    );
    assert!(fake.0.lock().unwrap().groups.is_empty());
    // Exactly the bound passes.
    let res = app.oneshot(put(&names[..10_000])).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(member_names(&fake, "big").len(), 10_000);
}

#[tokio::test]
async fn group_body_over_limit_is_413() {
    let fake = FakeEngine::default();
    let big = json!({ "members": vec!["m".repeat(60); 100] }).to_string();
    assert!(big.len() > BODY_MAX);
    call(&fake, Method::PUT, "/v1/groups/g1", Some(&big))
        .await
        .error(413, "too_large");
    call(&fake, Method::POST, "/v1/groups/g1/members", Some(&big))
        .await
        .error(413, "too_large");
}

#[tokio::test]
async fn members_add_and_remove() {
    let fake = FakeEngine::default();
    with_users(&fake, &["alice", "bob", "carol"]);
    call(
        &fake,
        Method::PUT,
        "/v1/groups/g1",
        Some(r#"{"members":["alice"]}"#),
    )
    .await;
    let res = call(
        &fake,
        Method::POST,
        "/v1/groups/g1/members",
        Some(r#"{"add":["bob","carol"]}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.json(), json!({"members_count":3}));
    let v = call(
        &fake,
        Method::POST,
        "/v1/groups/g1/members",
        Some(r#"{"remove":["alice"],"add":["alice2"]}"#),
    )
    .await;
    // alice2 does not exist: 404, nothing changes.
    v.error(404, "no_such_user");
    assert_eq!(member_names(&fake, "g1"), ["alice", "bob", "carol"]);
    let v = call(
        &fake,
        Method::POST,
        "/v1/groups/g1/members",
        Some(r#"{"remove":["alice","bob"]}"#),
    )
    .await
    .json();
    assert_eq!(v, json!({"members_count":1}));
    // An empty change is allowed and answers the count.
    let v = call(&fake, Method::POST, "/v1/groups/g1/members", None)
        .await
        .json();
    assert_eq!(v, json!({"members_count":1}));
    call(
        &fake,
        Method::POST,
        "/v1/groups/nope/members",
        Some(r#"{"add":["bob"]}"#),
    )
    .await
    .error(404, "no_such_group");
    for (body, needle) in [
        (r#"{"add":["b b"]}"#, "add[0]"),
        (r#"{"remove":["ok","x:y"]}"#, "remove[1]"),
        (r#"{"add":["bob"],"remove":["bob"]}"#, "both"),
        (r#"{"add":"bob"}"#, "invalid type"),
    ] {
        let msg = call(&fake, Method::POST, "/v1/groups/g1/members", Some(body))
            .await
            .error(400, "bad_request");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    assert_eq!(fake.0.lock().unwrap().changes.len(), 3);
}

#[tokio::test]
async fn members_change_is_bounded_at_1000_ids() {
    let fake = FakeEngine::default();
    let names: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        with_users(&fake, &refs);
    }
    call(&fake, Method::PUT, "/v1/groups/g1", None).await;
    let app = router(
        Arc::new(AppState {
            engine: fake.clone(),
            counters: Arc::default(),
        }),
        Arc::new(ApiKey::new(KEY)),
        crate::BODY_BYTES_MAX_DEFAULT,
    );
    let post = |body: Value| {
        Request::post("/v1/groups/g1/members")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    // 1001 in total, split over both lists: refused.
    let res = app
        .clone()
        .oneshot(post(json!({"add": names[..600], "remove": names[600..]})))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(fake.0.lock().unwrap().changes.is_empty());
    // 1000: accepted.
    let res = app
        .oneshot(post(json!({"add": names[..1000]})))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(member_names(&fake, "g1").len(), 1000);
}

#[tokio::test]
async fn members_pages() {
    let fake = FakeEngine::default();
    let names: Vec<String> = (0..250).map(|i| format!("u{i:03}")).collect();
    {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        with_users(&fake, &refs);
    }
    let body = json!({ "members": names }).to_string();
    let app = router(
        Arc::new(AppState {
            engine: fake.clone(),
            counters: Arc::default(),
        }),
        Arc::new(ApiKey::new(KEY)),
        crate::BODY_BYTES_MAX_DEFAULT,
    );
    let req = Request::put("/v1/groups/g1")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from(body))
        .unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::OK);

    // Default page size 100, `next` chains the pages, the last has none.
    let mut seen = Vec::new();
    let mut uri = "/v1/groups/g1/members".to_owned();
    loop {
        let res = call(&fake, Method::GET, &uri, None).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        let v = res.json();
        let page: Vec<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect();
        seen.extend(page);
        match v.get("next") {
            Some(next) => {
                assert_eq!(next.as_str(), seen.last().map(String::as_str));
                uri = format!("/v1/groups/g1/members?after={}", next.as_str().unwrap());
            }
            None => break,
        }
    }
    assert_eq!(seen, names);
    let limits: Vec<u32> = fake
        .0
        .lock()
        .unwrap()
        .member_calls
        .iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(limits, [100, 100, 100]);

    let v = call(
        &fake,
        Method::GET,
        "/v1/groups/g1/members?limit=1000&after=",
        None,
    )
    .await
    .json();
    assert_eq!(v["members"].as_array().unwrap().len(), 250);
    assert!(v.get("next").is_none(), "{v}");
    let v = call(
        &fake,
        Method::GET,
        "/v1/groups/g1/members?limit=2&after=u100",
        None,
    )
    .await
    .json();
    assert_eq!(v, json!({"members":["u101","u102"],"next":"u102"}));

    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=a%20b",
        "after=a:b",
    ] {
        let msg = call(
            &fake,
            Method::GET,
            &format!("/v1/groups/g1/members?{q}"),
            None,
        )
        .await
        .error(400, "bad_request");
        assert!(msg.contains("limit") || msg.contains("after"), "{q}: {msg}");
    }
    call(&fake, Method::GET, "/v1/groups/nope/members", None)
        .await
        .error(404, "no_such_group");
    call(&fake, Method::GET, "/v1/groups/a%20b/members", None)
        .await
        .error(400, "bad_request");
}

#[tokio::test]
async fn presence() {
    let fake = FakeEngine::default();
    fake.0.lock().unwrap().online.insert(
        tern_proto::UserId::parse("alice").unwrap(),
        vec![
            (tern_proto::DeviceId::parse("phone").unwrap(), FAKE_TS + 5),
            (tern_proto::DeviceId::parse("web").unwrap(), FAKE_TS + 9),
        ],
    );
    let res = call(&fake, Method::GET, "/v1/users/alice/presence", None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(
        res.json(),
        json!({"user":"alice","online":true,"devices":[
            {"device":"phone","since_ts":FAKE_TS + 5},
            {"device":"web","since_ts":FAKE_TS + 9}
        ]})
    );
    let v = call(&fake, Method::GET, "/v1/users/bob/presence", None)
        .await
        .json();
    assert_eq!(v, json!({"user":"bob","online":false,"devices":[]}));
    call(&fake, Method::GET, "/v1/users/b%20b/presence", None)
        .await
        .error(400, "bad_request");
    fake.0.lock().unwrap().fail = Some(ErrorCode::NoSuchUser);
    call(&fake, Method::GET, "/v1/users/bob/presence", None)
        .await
        .error(404, "no_such_user");
}

#[tokio::test]
async fn kick() {
    let fake = FakeEngine::default();
    let devices = || {
        vec![
            (tern_proto::DeviceId::parse("phone").unwrap(), FAKE_TS),
            (tern_proto::DeviceId::parse("web").unwrap(), FAKE_TS),
        ]
    };
    let alice = tern_proto::UserId::parse("alice").unwrap();
    fake.0
        .lock()
        .unwrap()
        .online
        .insert(alice.clone(), devices());
    let res = call(
        &fake,
        Method::POST,
        "/v1/users/alice/kick",
        Some(r#"{"device":"phone","reason":"banned"}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.json(), json!({"kicked":1}));
    fake.0.lock().unwrap().online.insert(alice, devices());
    let v = call(&fake, Method::POST, "/v1/users/alice/kick", None)
        .await
        .json();
    assert_eq!(v, json!({"kicked":2}));
    let v = call(&fake, Method::POST, "/v1/users/bob/kick", Some("{}"))
        .await
        .json();
    assert_eq!(v, json!({"kicked":0}));
    {
        let st = fake.0.lock().unwrap();
        let k = &st.kicks[0];
        assert_eq!(k.1.as_ref().map(|d| d.as_str()), Some("phone"));
        assert_eq!(k.2.as_deref(), Some("banned"));
        assert_eq!(
            (st.kicks[1].1.as_ref(), st.kicks[1].2.as_ref()),
            (None, None)
        );
    }
    let long_reason = json!({ "reason": "r".repeat(257) }).to_string();
    for (uri, body) in [
        ("/v1/users/alice/kick", r#"{"device":"a b"}"#),
        ("/v1/users/alice/kick", r#"{"device":""}"#),
        ("/v1/users/alice/kick", r#"{"reason":7}"#),
        ("/v1/users/alice/kick", long_reason.as_str()),
        ("/v1/users/a%20b/kick", "{}"),
    ] {
        call(&fake, Method::POST, uri, Some(body))
            .await
            .error(400, "bad_request");
    }
    assert_eq!(fake.0.lock().unwrap().kicks.len(), 3);
}

#[tokio::test]
async fn metrics_need_no_key_and_count_answers() {
    let fake = FakeEngine::default();
    fake.0.lock().unwrap().metrics = crate::metrics::tests::sample_metrics();
    // One router (one set of counters) for every request.
    let app = app(&fake);
    let get = |uri: &str, key: bool| {
        let mut req = Request::get(uri);
        if key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {KEY}"));
        }
        req.body(Body::empty()).unwrap()
    };
    for (uri, key) in [
        ("/healthz", false),
        ("/healthz", false),
        ("/v1/users/alice", false),
        ("/v1/users/alice", true),
        ("/nope", false),
    ] {
        app.clone().oneshot(get(uri, key)).await.unwrap();
    }
    let res = app.oneshot(get("/metrics", false)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let samples = crate::metrics::tests::parse_exposition(&text);
    let v = |s: &str| crate::metrics::tests::value_of(&samples, s);
    assert_eq!(v("tern_http_requests_total{code=\"200\"}"), 2.0);
    assert_eq!(v("tern_http_requests_total{code=\"401\"}"), 1.0);
    assert_eq!(v("tern_http_requests_total{code=\"404\"}"), 2.0);
    assert_eq!(v("tern_messages_in_total"), 10.0);
    assert_eq!(v("tern_connections{shard=\"0\"}"), 3.0);
}

/// Every route of the router, as the OpenAPI document must list it.
const ROUTES: [(&str, &str); 16] = [
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("put", "/v1/users/{user}"),
    ("get", "/v1/users/{user}"),
    ("delete", "/v1/users/{user}"),
    ("post", "/v1/users/{user}/tokens"),
    ("get", "/v1/users/{user}/presence"),
    ("post", "/v1/users/{user}/kick"),
    ("put", "/v1/groups/{group}"),
    ("get", "/v1/groups/{group}"),
    ("delete", "/v1/groups/{group}"),
    ("post", "/v1/groups/{group}/members"),
    ("get", "/v1/groups/{group}/members"),
    ("post", "/v1/messages"),
    ("get", "/v1/conversations/{conv}/messages"),
];

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let fake = FakeEngine::default();
    let res = send(
        &fake,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/json");
    let doc = res.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut n_ops = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                continue;
            }
            n_ops += 1;
            assert!(
                ROUTES.contains(&(method.as_str(), path.as_str())),
                "documented but not routed: {method} {path}"
            );
            let security = op["security"].as_array().unwrap();
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") {
                assert_eq!(security, &[json!({"api_key": []})], "{method} {path}");
                for code in ["401", "403"] {
                    let schema = &responses[code]["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
            } else {
                assert_eq!(security, &[json!({})], "{method} {path} needs no key");
            }
            assert!(
                responses.keys().any(|c| c.starts_with('2')),
                "{method} {path} has no success answer"
            );
            if ["put", "post"].contains(&method.as_str()) {
                assert!(
                    op["requestBody"]["content"]["application/json"]["schema"]["$ref"].is_string(),
                    "{method} {path} has no request body"
                );
            }
        }
    }
    assert_eq!(n_ops, ROUTES.len(), "routes missing from the document");
    // The hand-written Kind schema matches the real enum.
    let kinds: Vec<&str> = tern_proto::Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(doc["components"]["schemas"]["Kind"]["enum"], json!(kinds));
    for schema in [
        "ErrorBody",
        "GroupDto",
        "MembersPageDto",
        "PresenceDto",
        "SendBody",
        "Kind",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "no schema {schema}"
        );
    }

    // And each route in the list is really served (not a routing 404/405).
    for (method, path) in ROUTES {
        let uri = path
            .replace("{user}", "alice")
            .replace("{group}", "g1")
            .replace("{conv}", "dm:alice:bob");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = call(&fake, method.clone(), &uri, Some("{}")).await;
        let routed = match res.status.as_u16() {
            404 => res.json()["error"]["code"] != "not_found",
            405 => false,
            _ => true,
        };
        assert!(routed, "{method} {uri}: {} {}", res.status, res.text);
    }
}
