//! Request extractors whose every rejection is a JSON [`ApiError`]: axum's
//! own extractors answer in plain text, which a client of a JSON API should
//! never have to parse.
//!
//! Body decisions (PROTOCOL.md is silent, see docs/PROTOCOL.md):
//! - `Content-Type` is not checked: every body is JSON, and the API key
//!   (never sent by a browser cross-origin without a preflight) is what
//!   guards against forged requests.
//! - An empty (or all-whitespace) body reads as `{}`, so routes whose fields
//!   are all optional accept a bare request. Any other body must be a JSON
//!   object.
//! - Unknown fields are ignored, as in WebSocket frames.

use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::BODY_BYTES_MAX_DEFAULT;

/// The body limit, put into request extensions by the router; requests
/// without it (unit tests of the extractor) get [`BODY_BYTES_MAX_DEFAULT`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// How much of an oversize body is read and thrown away before the 413 goes
/// out. Closing a socket with unread input makes the kernel reset it, and a
/// client still writing its body then sees a broken pipe instead of our 413.
/// Beyond this the client gets the reset: reading more is not worth it.
const DRAIN_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// How long draining an oversize body may take, so a client trickling bytes
/// cannot hold a task (and shutdown) for long.
const DRAIN_TIME_MAX: Duration = Duration::from_secs(5);

/// A JSON request body of type `T`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req).await?;
        let text: &[u8] = match bytes.trim_ascii() {
            [] => b"{}",
            // serde reads a struct from an array too (`[1]` as `{"a":1}`);
            // every body of this API is an object, so insist on one.
            [b'{', ..] => &bytes,
            _ => return Err(ApiError::bad_request("request body must be a JSON object")),
        };
        serde_json::from_slice(text)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The whole body, at most the [`BodyLimit`]; 413 `too_large` beyond it.
async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(BODY_BYTES_MAX_DEFAULT, |l| l.0);
    let too_large = || ApiError::too_large(format!("request body is larger than {limit} bytes"));
    let headers = req.headers();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    if let Some(n) = announced {
        if n > limit as u64 {
            // A client waiting for `100 Continue` has not sent the body and,
            // refused now, never will; otherwise drain what is affordable.
            if !expects_continue && n <= DRAIN_BYTES_MAX {
                drain(body, 0).await;
            }
            return Err(too_large());
        }
    }
    let mut buf = Vec::with_capacity(announced.map_or(0, |n| n as usize));
    while let Some(chunk) = next_chunk(&mut body).await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Some(data) = chunk {
            if buf.len() + data.len() > limit {
                drain(body, (buf.len() + data.len()) as u64).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// The next chunk of `body`: `None` at its end, `Some(Ok(None))` for a frame
/// without data (HTTP/2 trailers, which carry nothing we use).
async fn next_chunk(body: &mut Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| {
        Pin::new(&mut *body)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map(|f| f.into_data().ok())))
    })
    .await
}

/// Read and discard the rest of `body`, within [`DRAIN_BYTES_MAX`] (counting
/// the `seen` bytes already read) and [`DRAIN_TIME_MAX`].
async fn drain(mut body: Body, mut seen: u64) {
    let read_rest = async {
        while let Some(Ok(chunk)) = next_chunk(&mut body).await {
            if let Some(data) = chunk {
                seen += data.len() as u64;
                if seen > DRAIN_BYTES_MAX {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME_MAX, read_rest).await;
}

/// Path parameters of type `T`.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| ApiPath(t))
            .map_err(|r| ApiError::bad_request(format!("invalid path: {}", r.body_text())))
    }
}

/// Query parameters of type `T`.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(t)| ApiQuery(t))
            .map_err(|r| ApiError::bad_request(format!("invalid query: {}", r.body_text())))
    }
}

/// Parse an optional numeric query parameter: absent or empty → `default`;
/// otherwise a decimal in `min..=max`.
pub(crate) fn query_u64(
    name: &str,
    raw: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let raw = match raw {
        None | Some("") => return Ok(default),
        Some(raw) => raw,
    };
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "`{name}` must be an integer in {min}..={max}, got {raw:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Thing {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct AllOptional {
        #[serde(default)]
        b: Option<String>,
    }

    async fn extract<T: DeserializeOwned>(body: &'static str, limit: usize) -> Result<T, ApiError> {
        let mut req = Request::builder()
            .method("POST")
            .uri("/")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .unwrap();
        req.extensions_mut().insert(BodyLimit(limit));
        ApiJson::<T>::from_request(req, &())
            .await
            .map(|ApiJson(t)| t)
    }

    #[tokio::test]
    async fn good_body() {
        assert_eq!(
            extract::<Thing>(r#"{"a":1,"b":"x","zzz":[1]}"#, 100)
                .await
                .unwrap(),
            Thing {
                a: 1,
                b: Some("x".into())
            }
        );
    }

    #[tokio::test]
    async fn empty_body_is_an_empty_object() {
        assert_eq!(
            extract::<AllOptional>("", 100).await.unwrap(),
            AllOptional { b: None }
        );
        assert_eq!(
            extract::<AllOptional>(" \n", 100).await.unwrap(),
            AllOptional { b: None }
        );
        let e = extract::<Thing>("", 100).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("missing field `a`"), "{}", e.message);
    }

    #[tokio::test]
    async fn bad_bodies_are_400_with_a_reason() {
        for (body, needle) in [
            ("{", "EOF"),
            ("[1]", "JSON object"),
            ("null", "JSON object"),
            ("1", "JSON object"),
            (r#"{"a":"1"}"#, "invalid type"),
            (r#"{"a":-1}"#, "invalid value"),
            (r#"{"a":1} x"#, "trailing characters"),
        ] {
            let e = extract::<Thing>(body, 100).await.unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "bad_request"),
                "{body}"
            );
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[tokio::test]
    async fn oversize_body_is_413() {
        let e = extract::<Thing>(r#"{"a":1,"b":"0123456789"}"#, 10)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        assert!(e.message.contains("10 bytes"), "{}", e.message);
    }

    #[test]
    fn numeric_query_values() {
        assert_eq!(query_u64("limit", None, 100, 1, 500).unwrap(), 100);
        assert_eq!(query_u64("limit", Some(""), 100, 1, 500).unwrap(), 100);
        assert_eq!(query_u64("limit", Some("500"), 100, 1, 500).unwrap(), 500);
        for bad in ["0", "501", "-1", "1.5", "x", "99999999999999999999999"] {
            let e = query_u64("limit", Some(bad), 100, 1, 500).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("`limit`"));
        }
    }
}
