//! Router tests of the web additions: demo sign-in on and off, its bounds,
//! `/app/config.json`, `/admin/stats` behind the key, the pages.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::{Extension, Router};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::auth::ApiKey;
use crate::demo::DemoLimits;
use crate::routes::testing::FakeEngine;
use crate::routes::{router, AppState};
use crate::web_assets::WebState;

const KEY: &str = "test-key";
const WS_PORT: u16 = 17700;

fn app(fake: &FakeEngine, demo: bool) -> Router {
    router(
        Arc::new(AppState {
            engine: fake.clone(),
            counters: Arc::default(),
        }),
        Arc::new(ApiKey::new(KEY)),
        4096,
    )
    .layer(Extension(Arc::new(WebState {
        demo: demo.then(DemoLimits::new),
        ws_port: WS_PORT,
    })))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v, ctype)
}

fn post_json(path: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn demo_is_refused_unless_enabled() {
    let fake = FakeEngine::default();
    let app = app(&fake, false);
    for path in ["/demo/session", "/demo/groups"] {
        let (status, v, _) = call(&app, post_json(path, json!({"user": "alice"}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(v["error"]["code"], "not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("--demo"));
    }
    assert!(fake.0.lock().unwrap().users.is_empty());
    assert!(fake.0.lock().unwrap().mints.is_empty());
}

#[tokio::test]
async fn demo_session_creates_the_user_and_mints_a_token() {
    let fake = FakeEngine::default();
    let app = app(&fake, true);
    let (status, v, _) = call(&app, post_json("/demo/session", json!({"user": "alice"}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["user"], "alice");
    assert!(!v["token"].as_str().unwrap().is_empty());
    // Again: the same user, a new token, no second creation.
    let (status, _, _) = call(&app, post_json("/demo/session", json!({"user": "alice"}))).await;
    assert_eq!(status, StatusCode::OK);
    let st = fake.0.lock().unwrap();
    assert_eq!(st.users.len(), 1);
    assert_eq!(st.mints.len(), 2);
    // Good for any device, for a day.
    assert_eq!(st.mints[0].1, None);
    assert_eq!(st.mints[0].2, 86_400);
}

#[tokio::test]
async fn demo_input_is_bounded() {
    let fake = FakeEngine::default();
    let app = app(&fake, true);
    for body in [
        json!({"user": "a b"}),
        json!({"user": ""}),
        json!({"user": "x".repeat(65)}),
        json!({"user": "ok", "name": "n".repeat(65)}),
        json!({}),
    ] {
        let (status, v, _) = call(&app, post_json("/demo/session", body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} {v}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    // Not JSON by content type: refused (a cross-site form cannot call it).
    let req = Request::builder()
        .method(Method::POST)
        .uri("/demo/session")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"user":"alice"}"#))
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::BAD_REQUEST);
    assert!(fake.0.lock().unwrap().users.is_empty());
}

#[tokio::test]
async fn demo_groups_create_once() {
    let fake = FakeEngine::default();
    let app = app(&fake, true);
    for u in ["alice", "bob"] {
        call(&app, post_json("/demo/session", json!({ "user": u }))).await;
    }
    let body = json!({"group": "team", "name": "Team", "members": ["alice", "bob", "bob"]});
    let (status, v, _) = call(&app, post_json("/demo/groups", body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["conv"], "group:team");
    assert_eq!(v["members_count"], 2);
    let (status, v, _) = call(&app, post_json("/demo/groups", body)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "conflict");
    let (status, v, _) = call(
        &app,
        post_json(
            "/demo/groups",
            json!({"group": "g2", "members": ["nobody"]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "no_such_user");
    let many: Vec<String> = (0..33).map(|i| format!("u{i}")).collect();
    let (status, _, _) = call(
        &app,
        post_json("/demo/groups", json!({"group": "g3", "members": many})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn config_tells_the_page_where_the_socket_is() {
    let fake = FakeEngine::default();
    for demo in [false, true] {
        let (status, v, ctype) = call(
            &app(&fake, demo),
            Request::get("/app/config.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        assert_eq!(
            v,
            json!({"demo": demo, "ws_port": WS_PORT, "ws_path": "/ws"})
        );
    }
}

#[tokio::test]
async fn stats_need_the_key() {
    let fake = FakeEngine::default();
    let app = app(&fake, false);
    let (status, _, _) = call(
        &app,
        Request::get("/admin/stats").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let req = Request::get("/admin/stats")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    let (status, v, _) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["ts"].as_u64().is_some());
    assert!(v["storage"]["commit_latency_us"]["buckets"].is_array());
}

#[tokio::test]
async fn pages_are_html_and_missing_assets_are_json_404() {
    let fake = FakeEngine::default();
    let app = app(&fake, false);
    for path in ["/app/", "/admin/"] {
        let (status, _, ctype) = call(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(ctype, "text/html; charset=utf-8");
    }
    let (status, v, _) = call(
        &app,
        Request::get("/static/../Cargo.toml")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
}
