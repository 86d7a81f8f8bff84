//! The router: every route of the business API, the JSON 404/405 answers,
//! the API-key guard and the body limit (enforced by `json::ApiJson`).

pub(crate) mod groups;
pub(crate) mod messages;
pub(crate) mod users;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};

use crate::auth::{self, ApiKey};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::json::BodyLimit;
use crate::metrics::{self, GatewayCounters};

/// What every handler can reach.
pub(crate) struct AppState<E> {
    /// The door into the engine.
    pub(crate) engine: E,
    /// The gateway's own counters (HTTP answers, webhooks).
    pub(crate) counters: Arc<GatewayCounters>,
}

/// Shared state as handlers extract it.
pub(crate) type Shared<E> = Arc<AppState<E>>;

/// The whole API as one router.
pub(crate) fn router<E: Engine>(
    state: Shared<E>,
    api_key: Arc<ApiKey>,
    body_bytes_max: usize,
) -> Router {
    let counters = state.counters.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page::<E>))
        .route("/openapi.json", get(crate::openapi::serve))
        .route(
            "/v1/users/{user}",
            put(users::put_user::<E>)
                .get(users::get_user::<E>)
                .delete(users::delete_user::<E>),
        )
        .route("/v1/users/{user}/tokens", post(users::mint_token::<E>))
        .route("/v1/users/{user}/presence", get(users::presence::<E>))
        .route("/v1/users/{user}/kick", post(users::kick::<E>))
        .route(
            "/v1/groups/{group}",
            put(groups::put_group::<E>)
                .get(groups::get_group::<E>)
                .delete(groups::delete_group::<E>),
        )
        .route(
            "/v1/groups/{group}/members",
            post(groups::change_members::<E>).get(groups::members::<E>),
        )
        .route("/v1/messages", post(messages::send::<E>))
        .route(
            "/v1/conversations/{conv}/messages",
            get(messages::history::<E>),
        )
        .route(
            crate::admin_stats::PATH,
            get(crate::admin_stats::stats::<E>),
        )
        .merge(crate::demo::routes::<E>())
        .merge(crate::web_assets::routes())
        // Must come after the routes: it is installed on each existing one.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
        // Outermost first on the way in: the key check runs before routing,
        // so unknown /v1 paths are guarded too.
        .layer(axum::middleware::from_fn_with_state(
            api_key,
            auth::require_api_key,
        ))
        .layer(Extension(BodyLimit(body_bytes_max)))
        // Outermost: counts every answer, the key check's included.
        .layer(axum::middleware::from_fn_with_state(
            counters,
            metrics::count_requests,
        ))
}

/// Answer of `GET /healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct HealthDto {
    /// Always `"ok"`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// `GET /healthz`: the listener accepts and the runtime serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Serving", body = HealthDto)),
    security(())
)]
pub(crate) async fn healthz() -> Json<HealthDto> {
    Json(HealthDto { status: "ok" })
}

/// `GET /metrics`: Prometheus text, no key (scrapers rarely hold one, and
/// the counters reveal no user data).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4",
        body = String,
        content_type = "text/plain; version=0.0.4"
    )),
    security(())
)]
pub(crate) async fn metrics_page<E: Engine>(State(st): State<Shared<E>>) -> impl IntoResponse {
    let text = metrics::render(&st.engine.metrics(), &st.counters);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

// Neither path nor method is echoed: both are unbounded client input.
async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("method not allowed on this route; see the Allow header")
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
