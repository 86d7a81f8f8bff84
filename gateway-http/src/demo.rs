//! Demo sign-in for the browser client, only with `tern serve --demo`:
//! `POST /demo/session` creates a user (if new) and mints a token without
//! the API key; `POST /demo/groups` creates a group of existing users.
//!
//! Anyone who reaches the port can then act as any user: that is the point
//! of a demo and why it is off by default. Without `--demo` both routes
//! answer 404 `not_found`. What a demo caller can do is bounded: ids follow
//! the contract's rules, calls share one rate limit, and the users and
//! groups made through these routes are capped per process.
//!
//! Both routes insist on `Content-Type: application/json`: a cross-origin
//! page then needs a CORS preflight, which this server never grants, so
//! another site cannot mint tokens through a visitor's browser.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tern_proto::{ErrorCode, GroupId, UserId};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::routes::Shared;
use crate::web_assets::WebState;

/// Lifetime of a demo token: the contract's default token lifetime.
const DEMO_TOKEN_TTL_S: u64 = 86_400;

/// Demo calls per second, all callers together: enough for a room of
/// people signing in, too few to fill the disk with users.
const DEMO_RATE_PER_S: f64 = 10.0;

/// Demo calls allowed at once above the rate (a test suite signing in a
/// handful of pages in a burst).
const DEMO_BURST: f64 = 100.0;

/// Users created through `/demo/session` per process run.
const DEMO_USERS_MAX: u32 = 1_000;

/// Groups created through `/demo/groups` per process run.
const DEMO_GROUPS_MAX: u32 = 200;

/// Members a demo group may start with: a demo chat, not a broadcast list.
const DEMO_GROUP_MEMBERS_MAX: usize = 32;

/// Longest display name of a demo user or group, in bytes.
const DEMO_NAME_BYTES_MAX: usize = 64;

/// The HTTP-only code for "that group already exists" (409).
const CONFLICT: &str = "conflict";

/// Shared limits of the demo routes.
pub(crate) struct DemoLimits {
    /// Token bucket: (tokens, last refill).
    bucket: Mutex<(f64, Instant)>,
    users_created: AtomicU32,
    groups_created: AtomicU32,
}

impl DemoLimits {
    pub(crate) fn new() -> Self {
        Self {
            bucket: Mutex::new((DEMO_BURST, Instant::now())),
            users_created: AtomicU32::new(0),
            groups_created: AtomicU32::new(0),
        }
    }

    /// Take one call from the bucket; 429 `rate_limited` when empty.
    fn take(&self) -> Result<(), ApiError> {
        let mut b = self
            .bucket
            .lock()
            .map_err(|_| ApiError::from_code(ErrorCode::Unavailable, "demo limiter poisoned"))?;
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * DEMO_RATE_PER_S;
        b.0 = (b.0 + refill).min(DEMO_BURST);
        b.1 = now;
        if b.0 < 1.0 {
            return Err(ApiError::from_code(
                ErrorCode::RateLimited,
                "too many demo calls; try again in a second",
            ));
        }
        b.0 -= 1.0;
        Ok(())
    }

    /// Count one creation against `max`; `rate_limited` once it is reached.
    fn reserve(counter: &AtomicU32, max: u32, what: &str) -> Result<(), ApiError> {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| {
                ApiError::from_code(
                    ErrorCode::RateLimited,
                    format!("this demo server has made its {max} {what}; restart it for more"),
                )
            })
    }
}

/// The demo routes, merged into the API router.
pub(crate) fn routes<E: Engine>() -> Router<Shared<E>> {
    Router::new()
        .route("/demo/session", post(session::<E>))
        .route("/demo/groups", post(create_group::<E>))
}

/// Body of `POST /demo/session`.
#[derive(Deserialize, Debug)]
struct SessionBody {
    user: String,
    #[serde(default)]
    name: Option<String>,
}

/// Answer of `POST /demo/session`.
#[derive(Serialize, Debug)]
struct SessionDto {
    user: UserId,
    /// Good for any device of the user.
    token: String,
    expires_ts: u64,
}

/// Body of `POST /demo/groups`.
#[derive(Deserialize, Debug)]
struct GroupBody {
    group: String,
    #[serde(default)]
    name: Option<String>,
    members: Vec<String>,
}

/// Answer of `POST /demo/groups`.
#[derive(Serialize, Debug)]
struct GroupDto {
    group: GroupId,
    conv: String,
    members_count: u64,
}

/// The demo limits when demo mode is on; 404 otherwise; 400 without a JSON
/// content type (see the module doc); then one call off the rate limit.
fn admit<'a>(web: &'a WebState, headers: &HeaderMap) -> Result<&'a DemoLimits, ApiError> {
    let Some(limits) = web.demo.as_ref() else {
        return Err(ApiError::not_found(
            "demo mode is off; start the server with `tern serve --demo`",
        ));
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError::bad_request(
            "demo calls need `Content-Type: application/json`",
        ));
    }
    limits.take()?;
    Ok(limits)
}

fn check_name(name: &Option<String>) -> Result<(), ApiError> {
    match name {
        Some(n) if n.len() > DEMO_NAME_BYTES_MAX => Err(ApiError::bad_request(format!(
            "name is {} bytes long, at most {DEMO_NAME_BYTES_MAX} are allowed",
            n.len()
        ))),
        _ => Ok(()),
    }
}

/// `POST /demo/session`: `{user, name?}` → `{user, token, expires_ts}`.
async fn session<E: Engine>(
    State(st): State<Shared<E>>,
    Extension(web): Extension<Arc<WebState>>,
    headers: HeaderMap,
    body: Result<ApiJson<SessionBody>, ApiError>,
) -> Result<Json<SessionDto>, ApiError> {
    let limits = admit(&web, &headers)?;
    let ApiJson(body) = body?;
    let user = crate::routes::users::parse_user(body.user)?;
    check_name(&body.name)?;
    if st.engine.get_user(&user).await?.is_none() {
        DemoLimits::reserve(&limits.users_created, DEMO_USERS_MAX, "users")?;
        st.engine.put_user(user.clone(), body.name, None).await?;
    }
    let minted = st.engine.mint_token(&user, None, DEMO_TOKEN_TTL_S).await?;
    Ok(Json(SessionDto {
        user,
        token: minted.token,
        expires_ts: minted.expires_ts,
    }))
}

/// `POST /demo/groups`: `{group, name?, members:[...]}` → `{group, conv,
/// members_count}`; 409 `conflict` when the group exists (a demo caller may
/// not take over someone's group).
async fn create_group<E: Engine>(
    State(st): State<Shared<E>>,
    Extension(web): Extension<Arc<WebState>>,
    headers: HeaderMap,
    body: Result<ApiJson<GroupBody>, ApiError>,
) -> Result<Json<GroupDto>, ApiError> {
    let limits = admit(&web, &headers)?;
    let ApiJson(body) = body?;
    let group =
        GroupId::from_string(body.group).map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_name(&body.name)?;
    if body.members.is_empty() || body.members.len() > DEMO_GROUP_MEMBERS_MAX {
        return Err(ApiError::bad_request(format!(
            "a demo group has 1 to {DEMO_GROUP_MEMBERS_MAX} members"
        )));
    }
    let mut members = Vec::with_capacity(body.members.len());
    for m in body.members {
        members.push(crate::routes::users::parse_user(m)?);
    }
    members.sort();
    members.dedup();
    if st.engine.get_group(&group).await?.is_some() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: CONFLICT,
            message: format!("group {group} already exists"),
        });
    }
    DemoLimits::reserve(&limits.groups_created, DEMO_GROUPS_MAX, "groups")?;
    let record = st
        .engine
        .put_group(group.clone(), body.name, Some(members))
        .await?;
    Ok(Json(GroupDto {
        conv: format!("group:{group}"),
        group: record.group,
        members_count: record.members_count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_runs_dry_then_refuses() {
        let l = DemoLimits::new();
        let mut ok = 0;
        while l.take().is_ok() {
            ok += 1;
            assert!(ok <= DEMO_BURST as u32 + 5, "bucket never ran dry");
        }
        assert!(ok >= DEMO_BURST as u32);
        assert_eq!(l.take().unwrap_err().code, "rate_limited");
    }

    #[test]
    fn creation_cap() {
        let n = AtomicU32::new(0);
        assert!(DemoLimits::reserve(&n, 2, "users").is_ok());
        assert!(DemoLimits::reserve(&n, 2, "users").is_ok());
        let e = DemoLimits::reserve(&n, 2, "users").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
