//! `POST /v1/messages` and `GET /v1/conversations/{conv}/messages`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tern_engine::SendRequest;
use tern_proto::{
    Cmid, ConvId, Entry, Kind, RawJson, Target, UserId, BODY_BYTES_MAX, SYNC_LIMIT_DEFAULT,
    SYNC_LIMIT_MAX,
};

use utoipa::ToSchema;

use super::Shared;
use crate::engine::Engine;
use crate::error::{ApiError, ErrorBody};
use crate::json::{query_u64, ApiJson, ApiPath, ApiQuery};

/// What a message body holds: `text` has a string body, the media kinds an
/// object such as `{url, mime, size, name, duration_ms}`. (Only the schema
/// of [`Kind`] for the OpenAPI document.)
#[derive(ToSchema)]
#[schema(as = Kind)]
#[allow(dead_code)] // only its schema is used
#[serde(rename_all = "snake_case")]
pub(crate) enum KindSchema {
    Text,
    Image,
    File,
    Voice,
    Custom,
}

/// Body of `POST /v1/messages`.
#[derive(Deserialize, Debug, ToSchema)]
pub(crate) struct SendBody {
    /// Sending user; absent: the sender is `system`, which may post to any
    /// group or user.
    #[serde(default)]
    from: Option<String>,
    /// `user:<id>`, `group:<id>` or a conversation id (`dm:<a>:<b>`).
    #[schema(example = "user:bob")]
    to: String,
    #[schema(value_type = KindSchema)]
    kind: Kind,
    /// Any JSON value (a string for `text`), at most 32 KiB encoded.
    #[schema(value_type = Value)]
    body: RawJson,
    /// Client message id, the dedup key (1–64 bytes). Absent: the server
    /// makes one up and nothing is deduplicated.
    #[serde(default)]
    cmid: Option<String>,
}

/// Answer of a send: the same fields as `send_ack` without `cmid`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct SendDto {
    /// Conversation id.
    #[schema(value_type = String, example = "dm:alice:bob")]
    conv: ConvId,
    /// Position in the conversation, from 1.
    seq: u64,
    /// Server time, ms since the Unix epoch.
    ts: u64,
}

/// Query of the history route; numbers are parsed by hand so an empty value
/// (`?after=`) means "default" and a bad one gets a clear message.
#[derive(Deserialize, Debug)]
pub(crate) struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// Answer of the history route.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct HistoryDto {
    /// Each entry exactly as it is pushed: `{"type":"msg", conv, seq, from,
    /// device, cmid, kind, body, ts}` or `{"type":"event", conv, seq, code,
    /// data, ts}`.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Entry>,
    /// Entries after the last one returned exist.
    has_more: bool,
}

/// `POST /v1/messages`: a send with the same path and guarantees as a
/// WebSocket `send`; 200 only once the message is durable.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    request_body = SendBody,
    responses(
        (status = 200, description = "Stored durably", body = SendDto),
        (status = 400, description = "`bad_request`: bad field", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key, or `not_member`", body = ErrorBody),
        (status = 404, description = "`no_such_user` or `no_such_group`", body = ErrorBody),
        (status = 409, description = "`rejected` by the before-send hook", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB or message body over 32 KiB", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
        (status = 503, description = "`unavailable`: nothing stored", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn send<E: Engine>(
    State(st): State<Shared<E>>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<Json<SendDto>, ApiError> {
    let bad = |field: &str, e: tern_proto::IdError| ApiError::bad_request(format!("{field}: {e}"));
    let from = body
        .from
        .map(UserId::from_string)
        .transpose()
        .map_err(|e| bad("from", e))?;
    // Checked here for a clear 400; the engine parses `to` again itself.
    Target::parse(&body.to).map_err(|e| bad("to", e))?;
    let cmid = match body.cmid {
        Some(c) => Some(
            Cmid::from_string(c)
                .map_err(|e| bad("cmid", e))?
                .into_string(),
        ),
        None => None,
    };
    if body.body.len() > BODY_BYTES_MAX {
        return Err(ApiError::too_large(format!(
            "body is {} bytes of JSON, at most {BODY_BYTES_MAX} are allowed",
            body.body.len()
        )));
    }
    if body.kind == Kind::Text && !body.body.is_string() {
        return Err(ApiError::bad_request(
            "body of a text message must be a JSON string",
        ));
    }
    let req = SendRequest {
        from,
        to: body.to,
        kind: body.kind,
        body: body.body,
        cmid,
    };
    let ok = st.engine.send(req).await?;
    Ok(Json(SendDto {
        conv: ok.conv,
        seq: ok.seq,
        ts: ok.ts,
    }))
}

/// `GET /v1/conversations/{conv}/messages?after=&limit=`: entries with
/// seq > `after` (default 0), at most `limit` (default 100, 1..=500).
#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}/messages",
    tag = "messages",
    params(
        ("conv" = String, Path, description = "Conversation id: `dm:<a>:<b>` (a < b) or `group:<id>`"),
        ("after" = Option<u64>, Query, description = "Entries with seq above this; default 0"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1..=500, default 100"),
    ),
    responses(
        (status = 200, description = "Timeline entries in seq order", body = HistoryDto),
        (status = 400, description = "Bad conversation id, after or limit", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn history<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(conv): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryDto>, ApiError> {
    let conv = ConvId::parse(&conv).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let after = query_u64("after", q.after.as_deref(), 0, 0, u64::MAX)?;
    let limit = query_u64(
        "limit",
        q.limit.as_deref(),
        u64::from(SYNC_LIMIT_DEFAULT),
        1,
        u64::from(SYNC_LIMIT_MAX),
    )?;
    // `limit <= SYNC_LIMIT_MAX`, a u32.
    let limit = u32::try_from(limit).unwrap_or(SYNC_LIMIT_MAX);
    let (messages, has_more) = st.engine.history(&conv, after, limit).await?;
    Ok(Json(HistoryDto { messages, has_more }))
}
