//! `/v1/groups/{group}` (upsert, read, dismiss) and its `members` routes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tern_engine::GroupRecord;
use tern_proto::{ErrorCode, GroupId, UserId};
use utoipa::ToSchema;

use super::users::NAME_BYTES_MAX;
use super::Shared;
use crate::engine::Engine;
use crate::error::{ApiError, ErrorBody};
use crate::json::{query_u64, ApiJson, ApiPath, ApiQuery};

/// Most ids in the `members` of `PUT /v1/groups/{group}`. PROTOCOL.md bounds
/// only the members route; a full replacement list needs more room than a
/// change, and 10,000 ids (~700 KB of JSON) still fit the 1 MiB body.
pub(crate) const PUT_MEMBERS_MAX: usize = 10_000;

/// Most ids in `add` and `remove` together (PROTOCOL.md: "at most 1,000 ids
/// per request").
pub(crate) const CHANGE_IDS_MAX: usize = 1_000;

/// Members per page when `limit` is absent.
pub(crate) const MEMBERS_PAGE_DEFAULT: u64 = 100;

/// Most members per page: one page is one storage scan and one answer of at
/// most ~70 KB.
pub(crate) const MEMBERS_PAGE_MAX: u64 = 1_000;

const _: () = assert!(MEMBERS_PAGE_DEFAULT >= 1 && MEMBERS_PAGE_DEFAULT <= MEMBERS_PAGE_MAX);
const _: () = assert!(MEMBERS_PAGE_MAX <= u32::MAX as u64);

/// Body of `PUT /v1/groups/{group}`.
#[derive(Deserialize, Debug, ToSchema)]
pub(crate) struct PutGroupBody {
    /// Display name, at most 1,024 bytes. Absent: unchanged (none on create).
    #[serde(default)]
    name: Option<String>,
    /// When given, replaces the member list (at most 10,000 user ids, each
    /// an existing user). Absent: unchanged (empty on create).
    #[serde(default)]
    members: Option<Vec<String>>,
}

/// A group: `{group, name, members_count, created_ts}`; an unset name is
/// `null`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct GroupDto {
    /// Group id.
    #[schema(value_type = String, example = "team-1")]
    group: GroupId,
    name: Option<String>,
    members_count: u64,
    /// Creation time, ms since the Unix epoch.
    created_ts: u64,
}

impl From<GroupRecord> for GroupDto {
    fn from(r: GroupRecord) -> Self {
        Self {
            group: r.group,
            name: r.name,
            members_count: r.members_count,
            created_ts: r.created_ts,
        }
    }
}

/// Body of `POST /v1/groups/{group}/members`: at most 1,000 ids in `add`
/// and `remove` together; an id may not be in both.
#[derive(Deserialize, Debug, ToSchema)]
pub(crate) struct ChangeMembersBody {
    /// Users to add (each must exist; adding a member again is a no-op).
    #[serde(default)]
    add: Vec<String>,
    /// Users to remove (removing a non-member is a no-op).
    #[serde(default)]
    remove: Vec<String>,
}

/// Answer of `POST /v1/groups/{group}/members`.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct MembersCountDto {
    /// Members after the change.
    members_count: u64,
}

/// Query of `GET /v1/groups/{group}/members` (numbers parsed by hand, as in
/// the history route).
#[derive(Deserialize, Debug)]
pub(crate) struct MembersQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// A page of members.
#[derive(Serialize, Debug, ToSchema)]
pub(crate) struct MembersPageDto {
    /// User ids in byte order.
    #[schema(value_type = Vec<String>)]
    members: Vec<UserId>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    next: Option<UserId>,
}

fn parse_group(raw: String) -> Result<GroupId, ApiError> {
    GroupId::from_string(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Validate a list of user ids; the message names the field and index.
fn parse_users(field: &str, raw: Vec<String>) -> Result<Vec<UserId>, ApiError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, u)| {
            UserId::from_string(u).map_err(|e| ApiError::bad_request(format!("{field}[{i}]: {e}")))
        })
        .collect()
}

fn no_such_group(group: &GroupId) -> ApiError {
    ApiError::from_code(ErrorCode::NoSuchGroup, format!("no such group: {group}"))
}

/// `PUT /v1/groups/{group}`: create (event 1501) or update (1502 for a new
/// name; 1509/1508 when `members` replaces the list).
#[utoipa::path(
    put,
    path = "/v1/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    request_body = PutGroupBody,
    responses(
        (status = 200, description = "The group as stored", body = GroupDto),
        (status = 400, description = "Bad id, name too long, more than 10,000 members", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_user`: a member does not exist; nothing changed", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn put_group<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<PutGroupBody>,
) -> Result<Json<GroupDto>, ApiError> {
    let group = parse_group(group)?;
    if let Some(name) = &body.name {
        if name.len() > NAME_BYTES_MAX {
            return Err(ApiError::bad_request(format!(
                "name is {} bytes long, at most {NAME_BYTES_MAX} are allowed",
                name.len()
            )));
        }
    }
    let members = match body.members {
        Some(m) if m.len() > PUT_MEMBERS_MAX => {
            return Err(ApiError::bad_request(format!(
                "members lists {} ids, at most {PUT_MEMBERS_MAX} are allowed; \
                 add more with POST /v1/groups/{group}/members",
                m.len()
            )));
        }
        Some(m) => Some(parse_users("members", m)?),
        None => None,
    };
    let record = st.engine.put_group(group, body.name, members).await?;
    Ok(Json(record.into()))
}

/// `GET /v1/groups/{group}`: 200 with the group or 404 `no_such_group`.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group", body = GroupDto),
        (status = 400, description = "Bad group id", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_group`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn get_group<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(group): ApiPath<String>,
) -> Result<Json<GroupDto>, ApiError> {
    let group = parse_group(group)?;
    match st.engine.get_group(&group).await? {
        Some(record) => Ok(Json(record.into())),
        None => Err(no_such_group(&group)),
    }
}

/// `DELETE /v1/groups/{group}`: dismiss (event 1520); 204 or 404.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 204, description = "Dismissed"),
        (status = 400, description = "Bad group id", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_group`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn delete_group<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(group): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let group = parse_group(group)?;
    if st.engine.delete_group(&group).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_group(&group))
    }
}

/// `POST /v1/groups/{group}/members`: add and remove (events 1509/1508).
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/members",
    tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    request_body = ChangeMembersBody,
    responses(
        (status = 200, description = "The member count after the change", body = MembersCountDto),
        (status = 400, description = "Bad id, more than 1,000 ids, an id in both lists", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_group`, or `no_such_user` for an id in `add` (nothing changed)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn change_members<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<ChangeMembersBody>,
) -> Result<Json<MembersCountDto>, ApiError> {
    let group = parse_group(group)?;
    let n_ids = body.add.len() + body.remove.len();
    if n_ids > CHANGE_IDS_MAX {
        return Err(ApiError::bad_request(format!(
            "add and remove list {n_ids} ids together, at most {CHANGE_IDS_MAX} are allowed per request"
        )));
    }
    let add = parse_users("add", body.add)?;
    let remove = parse_users("remove", body.remove)?;
    // Both lists are at most 1,000 long: the quadratic check is cheap and
    // allocates nothing. "Add and remove" has no one obvious meaning.
    if let Some(both) = add.iter().find(|u| remove.contains(u)) {
        return Err(ApiError::bad_request(format!(
            "user {both} is in both add and remove"
        )));
    }
    let members_count = st.engine.change_members(&group, add, remove).await?;
    Ok(Json(MembersCountDto { members_count }))
}

/// `GET /v1/groups/{group}/members?after=&limit=`: members in byte order
/// after `after` (exclusive), at most `limit` (default 100, 1..=1000).
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/members",
    tag = "groups",
    params(
        ("group" = String, Path, description = "Group id"),
        ("after" = Option<String>, Query, description = "Start after this user id (the previous page's `next`)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000, default 100"),
    ),
    responses(
        (status = 200, description = "One page of members", body = MembersPageDto),
        (status = 400, description = "Bad id or limit", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 404, description = "`no_such_group`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn members<E: Engine>(
    State(st): State<Shared<E>>,
    ApiPath(group): ApiPath<String>,
    ApiQuery(q): ApiQuery<MembersQuery>,
) -> Result<Json<MembersPageDto>, ApiError> {
    let group = parse_group(group)?;
    let after = match q.after.filter(|a| !a.is_empty()) {
        Some(a) => {
            Some(UserId::from_string(a).map_err(|e| ApiError::bad_request(format!("after: {e}")))?)
        }
        None => None,
    };
    let limit = query_u64(
        "limit",
        q.limit.as_deref(),
        MEMBERS_PAGE_DEFAULT,
        1,
        MEMBERS_PAGE_MAX,
    )?;
    // `limit <= MEMBERS_PAGE_MAX`, which fits a u32 (asserted above).
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    let page = st.engine.members(&group, after, limit).await?;
    Ok(Json(MembersPageDto {
        members: page.members,
        next: page.next,
    }))
}
