//! `/v1/users/{user}` (upsert, read, delete) and `/v1/users/{user}/tokens`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tern_engine::UserRecord;
use tern_proto::{DeviceId, ErrorCode, RawJson, UserId};

use super::Shared;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::json::{ApiJson, ApiPath};

/// Longest display name, in bytes. PROTOCOL.md sets none; a name is for
/// display, and a bound keeps user records small in storage and in memory.
pub(crate) const NAME_BYTES_MAX: usize = 1024;

/// Longest `meta`, as JSON text. PROTOCOL.md sets none beyond the 1 MiB body;
/// the bound keeps one user record from being a megabyte.
pub(crate) const META_BYTES_MAX: usize = 64 * 1024;

/// Token lifetime when the request names none (PROTOCOL.md: 86,400 s).
pub(crate) const TOKEN_TTL_S_DEFAULT: u64 = 86_400;

/// Longest token lifetime (PROTOCOL.md: "at most 30 days").
pub(crate) const TOKEN_TTL_S_MAX: u64 = 30 * 86_400;

const _: () = assert!(TOKEN_TTL_S_DEFAULT >= 1 && TOKEN_TTL_S_DEFAULT <= TOKEN_TTL_S_MAX);

/// Body of `PUT /v1/users/{user}`.
#[derive(Deserialize, Debug)]
pub(crate) struct PutUserBody {
    #[serde(default)]
    name: Option<String>,
    /// Any JSON value; `null` counts as absent.
    #[serde(default)]
    meta: Option<RawJson>,
}

/// A user as answered: `{user, name, meta, created_ts}`; an unset name or
/// meta is `null`.
#[derive(Serialize, Debug)]
pub(crate) struct UserDto {
    user: UserId,
    name: Option<String>,
    meta: Option<RawJson>,
    created_ts: u64,
}

impl From<UserRecord> for UserDto {
    fn from(r: UserRecord) -> Self {
        Self {
            user: r.user,
            name: r.name,
            meta: r.meta,
            created_ts: r.created_ts,
        }
    }
}

/// Body of `POST /v1/users/{user}/tokens`.
#[derive(Deserialize, Debug)]
pub(crate) struct MintBody {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Answer of `POST /v1/users/{user}/tokens`.
#[derive(Serialize, Debug)]
pub(crate) struct TokenDto {
    token: String,
    expires_ts: u64,
}

fn parse_user(raw: String) -> Result<UserId, ApiError> {
    UserId::from_string(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn no_such_user(user: &UserId) -> ApiError {
    ApiError::from_code(ErrorCode::NoSuchUser, format!("no such user: {user}"))
}

/// `PUT /v1/users/{user}`: create or update (upsert).
pub(crate) async fn put_user<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<PutUserBody>,
) -> Result<Json<UserDto>, ApiError> {
    let user = parse_user(user)?;
    if let Some(name) = &body.name {
        if name.len() > NAME_BYTES_MAX {
            return Err(ApiError::bad_request(format!(
                "name is {} bytes long, at most {NAME_BYTES_MAX} are allowed",
                name.len()
            )));
        }
    }
    if let Some(meta) = &body.meta {
        if meta.len() > META_BYTES_MAX {
            return Err(ApiError::too_large(format!(
                "meta is {} bytes of JSON, at most {META_BYTES_MAX} are allowed",
                meta.len()
            )));
        }
    }
    let record = st.engine.put_user(user, body.name, body.meta).await?;
    Ok(Json(record.into()))
}

/// `GET /v1/users/{user}`: 200 with the user or 404 `no_such_user`.
pub(crate) async fn get_user<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<UserDto>, ApiError> {
    let user = parse_user(user)?;
    match st.engine.get_user(&user).await? {
        Some(record) => Ok(Json(record.into())),
        None => Err(no_such_user(&user)),
    }
}

/// `DELETE /v1/users/{user}`: 204, or 404 `no_such_user`. The engine revokes
/// the user's tokens and closes its connections.
pub(crate) async fn delete_user<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let user = parse_user(user)?;
    if st.engine.delete_user(&user).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_user(&user))
    }
}

/// `POST /v1/users/{user}/tokens`: mint an access token.
pub(crate) async fn mint_token<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<MintBody>,
) -> Result<Json<TokenDto>, ApiError> {
    let user = parse_user(user)?;
    let device = body
        .device
        .map(DeviceId::from_string)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ttl_s = body.ttl_s.unwrap_or(TOKEN_TTL_S_DEFAULT);
    if !(1..=TOKEN_TTL_S_MAX).contains(&ttl_s) {
        return Err(ApiError::bad_request(format!(
            "ttl_s must be between 1 and {TOKEN_TTL_S_MAX} seconds (30 days), got {ttl_s}"
        )));
    }
    let minted = st.engine.mint_token(&user, device, ttl_s).await?;
    Ok(Json(TokenDto {
        token: minted.token,
        expires_ts: minted.expires_ts,
    }))
}
