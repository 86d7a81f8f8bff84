//! `/v1/users/{user}` (upsert, read, delete), `/v1/users/{user}/tokens`,
//! `/v1/users/{user}/presence` and `/v1/users/{user}/kick`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tern_engine::{Presence, UserRecord};
use tern_proto::{DeviceId, ErrorCode, RawJson, UserId};
use utoipa::ToSchema;

use super::Shared;
use crate::engine::Engine;
use crate::error::{ApiError, ErrorBody};
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

/// Longest kick `reason`, in bytes: it travels to the client in a `kicked`
/// frame and is for display or logs.
pub(crate) const KICK_REASON_BYTES_MAX: usize = 256;

/// Body of `PUT /v1/users/{user}`.
#[derive(Deserialize, Debug, ToSchema)]
pub(crate) struct PutUserBody {
    /// Display name, at most 1,024 bytes.
    #[serde(default)]
    name: Option<String>,
    /// Any JSON value, at most 64 KiB encoded; `null` counts as absent.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    meta: Option<RawJson>,
}

/// A user as answered: `{user, name, meta, created_ts}`; an unset name or
/// meta is `null`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct UserDto {
    /// User id.
    #[schema(value_type = String, example = "alice")]
    user: UserId,
    name: Option<String>,
    /// Any JSON value.
    #[schema(value_type = Option<Value>)]
    meta: Option<RawJson>,
    /// Creation time, ms since the Unix epoch.
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
#[derive(Deserialize, Debug, ToSchema)]
pub(crate) struct MintBody {
    /// The only device the token is good for; absent: any device.
    #[serde(default)]
    device: Option<String>,
    /// Lifetime in seconds, 1..=2,592,000 (30 days); default 86,400.
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Answer of `POST /v1/users/{user}/tokens`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct TokenDto {
    /// Opaque access token for the WebSocket `auth` frame.
    token: String,
    /// Expiry, ms since the Unix epoch.
    expires_ts: u64,
}

/// Who of a user is online: `{user, online, devices:[{device, since_ts}]}`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct PresenceDto {
    #[schema(value_type = String, example = "alice")]
    user: UserId,
    /// At least one device is connected.
    online: bool,
    devices: Vec<DeviceDto>,
}

/// One connected device.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct DeviceDto {
    #[schema(value_type = String, example = "phone")]
    device: DeviceId,
    /// Connected since, ms since the Unix epoch.
    since_ts: u64,
}

impl From<Presence> for PresenceDto {
    fn from(p: Presence) -> Self {
        Self {
            user: p.user,
            online: p.online,
            devices: p
                .devices
                .into_iter()
                .map(|(device, since_ts)| DeviceDto { device, since_ts })
                .collect(),
        }
    }
}

/// Body of `POST /v1/users/{user}/kick`.
#[derive(Deserialize, Debug, ToSchema)]
pub(crate) struct KickBody {
    /// Only this device; absent: every device of the user.
    #[serde(default)]
    device: Option<String>,
    /// Sent to the client in the `kicked` frame, at most 256 bytes.
    #[serde(default)]
    reason: Option<String>,
}

/// Answer of `POST /v1/users/{user}/kick`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct KickedDto {
    /// Connections closed.
    kicked: u64,
}

pub(crate) fn parse_user(raw: String) -> Result<UserId, ApiError> {
    UserId::from_string(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn no_such_user(user: &UserId) -> ApiError {
    ApiError::from_code(ErrorCode::NoSuchUser, format!("no such user: {user}"))
}

/// `PUT /v1/users/{user}`: create or update (upsert).
#[utoipa::path(
    put,
    path = "/v1/users/{user}",
    tag = "users",
    params(("user" = String, Path, description = "User id")),
    request_body = PutUserBody,
    responses(
        (status = 200, description = "The user as stored", body = UserDto),
        (status = 400, description = "Bad id, name too long", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB or meta over 64 KiB", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
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
#[utoipa::path(
    get,
    path = "/v1/users/{user}",
    tag = "users",
    params(("user" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserDto),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_user`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
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
#[utoipa::path(
    delete,
    path = "/v1/users/{user}",
    tag = "users",
    params(("user" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted; its tokens are revoked and connections closed"),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_user`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
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
#[utoipa::path(
    post,
    path = "/v1/users/{user}/tokens",
    tag = "users",
    params(("user" = String, Path, description = "User id")),
    request_body = MintBody,
    responses(
        (status = 200, description = "A new token", body = TokenDto),
        (status = 400, description = "Bad user or device id, ttl_s out of range", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_user`", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn mint_token<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<MintBody>,
) -> Result<Json<TokenDto>, ApiError> {
    let user = parse_user(user)?;
    let device = parse_device(body.device)?;
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

/// `GET /v1/users/{user}/presence`: the user's connected devices.
#[utoipa::path(
    get,
    path = "/v1/users/{user}/presence",
    tag = "users",
    params(("user" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Online devices", body = PresenceDto),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_user`", body = ErrorBody),
        (status = 503, description = "Engine unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn presence<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<PresenceDto>, ApiError> {
    let user = parse_user(user)?;
    Ok(Json(st.engine.presence(&user).await?.into()))
}

/// `POST /v1/users/{user}/kick`: close one device's or all connections of a
/// user with a `kicked` frame.
#[utoipa::path(
    post,
    path = "/v1/users/{user}/kick",
    tag = "users",
    params(("user" = String, Path, description = "User id")),
    request_body = KickBody,
    responses(
        (status = 200, description = "How many connections were closed", body = KickedDto),
        (status = 400, description = "Bad user or device id, reason too long", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_user`", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 503, description = "Engine unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn kick<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<KickBody>,
) -> Result<Json<KickedDto>, ApiError> {
    let user = parse_user(user)?;
    let device = parse_device(body.device)?;
    if let Some(reason) = &body.reason {
        if reason.len() > KICK_REASON_BYTES_MAX {
            return Err(ApiError::bad_request(format!(
                "reason is {} bytes long, at most {KICK_REASON_BYTES_MAX} are allowed",
                reason.len()
            )));
        }
    }
    let kicked = st.engine.kick(&user, device, body.reason).await?;
    Ok(Json(KickedDto {
        kicked: kicked as u64,
    }))
}

/// An optional device id from a request body.
fn parse_device(device: Option<String>) -> Result<Option<DeviceId>, ApiError> {
    device
        .map(DeviceId::from_string)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}
