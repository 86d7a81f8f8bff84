//! API-key check on every `/v1` path (PROTOCOL.md: "`Authorization: Bearer
//! <api key>` on every `/v1` route (401 without, 403 on a wrong key)").
//!
//! It runs before routing, so an unknown `/v1` path or a wrong method answers
//! 401/403 to a caller without the key rather than revealing which routes
//! exist.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured key, kept as its SHA-256 digest: comparing fixed-length
/// digests in constant time leaks neither the key's bytes nor its length.
pub(crate) struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    pub(crate) fn new(key: &str) -> Self {
        Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Constant-time comparison of a presented key with the configured one.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        presented.ct_eq(&self.digest).into()
    }
}

/// Paths the key protects: `/v1` and everything under it, and the
/// dashboard's stats route (the dashboard page itself holds no data).
fn is_protected(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/") || path == crate::admin_stats::PATH
}

/// The credential of a `Bearer` Authorization header (scheme name
/// case-insensitive, RFC 9110 §11.1); `None` when absent or another scheme.
fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

/// Middleware: 401 `unauthorized` without a Bearer key, 403 `forbidden` with
/// a wrong one, otherwise on to the route.
pub(crate) async fn require_api_key(
    State(key): State<Arc<ApiKey>>,
    req: Request,
    next: Next,
) -> Response {
    if !is_protected(req.uri().path()) {
        return next.run(req).await;
    }
    match bearer(&req) {
        None => ApiError::unauthorized("missing `Authorization: Bearer <api key>` header")
            .into_response(),
        Some(presented) if !key.matches(presented) => {
            ApiError::forbidden("wrong API key").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    fn app() -> Router {
        Router::new()
            .route("/v1/thing", get(|| async { "secret" }))
            .route("/open", get(|| async { "open" }))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(ApiKey::new("k3y")),
                require_api_key,
            ))
    }

    async fn call(path: &str, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let res = app()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn code_of(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["error"]["code"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn missing_key_is_401() {
        for auth in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Basic k3y"),
            Some("k3y"),
        ] {
            let (status, body) = call("/v1/thing", auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(code_of(&body), "unauthorized");
        }
    }

    #[tokio::test]
    async fn wrong_key_is_403() {
        for auth in [
            "Bearer k3",
            "Bearer k3yy",
            "Bearer K3Y",
            "Bearer ",
            "bearer nope",
        ] {
            let (status, body) = call("/v1/thing", Some(auth)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{auth:?}");
            assert_eq!(code_of(&body), "forbidden");
        }
    }

    #[tokio::test]
    async fn right_key_passes() {
        for auth in ["Bearer k3y", "bearer k3y", "BEARER  k3y "] {
            assert_eq!(
                call("/v1/thing", Some(auth)).await,
                (StatusCode::OK, "secret".into()),
                "{auth:?}"
            );
        }
    }

    #[tokio::test]
    async fn unprotected_paths_need_no_key() {
        assert_eq!(call("/open", None).await, (StatusCode::OK, "open".into()));
        // Unknown /v1 paths are guarded too (no route discovery without a key).
        assert_eq!(call("/v1/nope", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call("/v1", None).await.0, StatusCode::UNAUTHORIZED);
        // A lookalike prefix is not /v1.
        assert_eq!(call("/v1x", None).await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn key_comparison() {
        let k = ApiKey::new("abc");
        assert!(k.matches(b"abc"));
        assert!(!k.matches(b"abd"));
        assert!(!k.matches(b"ab"));
        assert!(!k.matches(b""));
    }
}
