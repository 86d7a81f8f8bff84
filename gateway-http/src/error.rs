//! The one error type every handler, extractor and middleware returns, its
//! JSON body, and the ONE mapping from protocol error codes to HTTP statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tern_engine::EngineError;
use tern_proto::ErrorCode;

/// An error answer: `{"error":{"code":..,"message":..}}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// A protocol [`ErrorCode`] name, or one of the HTTP-only codes below.
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// HTTP-only codes: conditions the WebSocket protocol has no code for.
pub(crate) mod http_code {
    /// A `Bearer` key was presented and is wrong (401 is for a missing one).
    pub(crate) const FORBIDDEN: &str = "forbidden";
    /// No route has this path.
    pub(crate) const NOT_FOUND: &str = "not_found";
    /// The path exists, the method does not.
    pub(crate) const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
}

/// THE mapping from protocol error codes to HTTP statuses (PROTOCOL.md,
/// "Business HTTP API"). Exhaustive on purpose: a new code must be placed.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotMember => StatusCode::FORBIDDEN,
        ErrorCode::NoSuchUser | ErrorCode::NoSuchGroup => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Rejected => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ApiError {
    /// An error with a protocol code; the status comes from [`status_of`].
    pub(crate) fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code: code.as_str(),
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::from_code(ErrorCode::BadRequest, message)
    }

    /// 413 `too_large`.
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::from_code(ErrorCode::TooLarge, message)
    }

    /// 401 `unauthorized`.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::from_code(ErrorCode::Unauthorized, message)
    }

    /// 403 `forbidden`.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: http_code::FORBIDDEN,
            message: message.into(),
        }
    }

    /// 404 `not_found` (no such route).
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: http_code::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 405 `method_not_allowed`.
    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: http_code::METHOD_NOT_ALLOWED,
            message: message.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        if e.code == ErrorCode::Unavailable {
            // The client only sees "unavailable"; the operator needs the cause.
            tracing::warn!("engine unavailable: {}", e.message);
        }
        Self::from_code(e.code, e.message)
    }
}

/// Every error answer: `{"error":{"code":..,"message":..}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// The error itself.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// A protocol error code (`bad_request`, `unauthorized`, `not_member`,
    /// `no_such_user`, `no_such_group`, `too_large`, `rate_limited`,
    /// `rejected`, `unavailable`) or an HTTP-only one (`forbidden`,
    /// `not_found`, `method_not_allowed`).
    #[schema(value_type = String, example = "no_such_user")]
    code: &'static str,
    /// Human-readable detail; not meant to be parsed.
    message: String,
}

/// Statuses that say "not now" rather than "not this": 429 (a limit) and
/// 503 (storage failed or overloaded; nothing was stored, so the same
/// request, with the same cmid for a send, may be repeated).
pub(crate) fn retry_later(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the scheme it wants.
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if retry_later(self.status) {
            // RFC 9110 §10.2.3: when a caller may try again (the same wait
            // as a refused WebSocket connection's 503).
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(tern_engine::limits::REFUSED_RETRY_AFTER_S),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CODES: [(ErrorCode, &str, u16); 9] = [
        (ErrorCode::BadRequest, "bad_request", 400),
        (ErrorCode::Unauthorized, "unauthorized", 401),
        (ErrorCode::NotMember, "not_member", 403),
        (ErrorCode::NoSuchUser, "no_such_user", 404),
        (ErrorCode::NoSuchGroup, "no_such_group", 404),
        (ErrorCode::TooLarge, "too_large", 413),
        (ErrorCode::RateLimited, "rate_limited", 429),
        (ErrorCode::Rejected, "rejected", 409),
        (ErrorCode::Unavailable, "unavailable", 503),
    ];

    #[test]
    fn every_code_maps_to_its_status() {
        for (code, name, status) in ALL_CODES {
            assert_eq!(status_of(code).as_u16(), status, "{name}");
        }
    }

    #[tokio::test]
    async fn engine_errors_become_json_bodies() {
        for (code, name, status) in ALL_CODES {
            let e = ApiError::from(EngineError {
                code,
                message: format!("why {name}"),
            });
            let res = e.into_response();
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
            let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"error": {"code": name, "message": format!("why {name}")}})
            );
        }
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let res = ApiError::unauthorized("no key").into_response();
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let res = ApiError::forbidden("wrong key").into_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(res.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn only_not_now_answers_say_when_to_retry() {
        for (code, name, status) in ALL_CODES {
            let res = ApiError::from_code(code, "why").into_response();
            let retry = res.headers().get(header::RETRY_AFTER);
            if status == 429 || status == 503 {
                assert_eq!(retry.map(|v| v.as_bytes()), Some(&b"1"[..]), "{name}");
            } else {
                assert!(retry.is_none(), "{name} says Retry-After");
            }
        }
    }
}
