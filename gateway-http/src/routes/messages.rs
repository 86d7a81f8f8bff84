//! `POST /v1/messages` and `GET /v1/conversations/{conv}/messages`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tern_engine::SendRequest;
use tern_proto::{
    Cmid, ConvId, Entry, Kind, RawJson, Target, UserId, BODY_BYTES_MAX, SYNC_LIMIT_DEFAULT,
    SYNC_LIMIT_MAX,
};

use super::Shared;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::json::{query_u64, ApiJson, ApiPath, ApiQuery};

/// Body of `POST /v1/messages`.
#[derive(Deserialize, Debug)]
pub(crate) struct SendBody {
    /// Absent: the sender is `system`.
    #[serde(default)]
    from: Option<String>,
    to: String,
    kind: Kind,
    /// Any JSON value (a string for `text`).
    body: RawJson,
    /// Absent: the engine makes one up and nothing is deduplicated.
    #[serde(default)]
    cmid: Option<String>,
}

/// Answer of a send: the same fields as `send_ack` without `cmid`.
#[derive(Serialize, Debug)]
pub(crate) struct SendDto {
    conv: ConvId,
    seq: u64,
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
#[derive(Serialize, Debug)]
pub(crate) struct HistoryDto {
    /// Each entry exactly as it is pushed (`"type":"msg"` or `"type":"event"`).
    messages: Vec<Entry>,
    has_more: bool,
}

/// `POST /v1/messages`: a send with the same path and guarantees as a
/// WebSocket `send`; 200 only once the message is durable.
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
