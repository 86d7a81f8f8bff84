//! The router: every route of the business API, the JSON 404/405 answers,
//! the API-key guard and the body limit (enforced by `json::ApiJson`).

pub(crate) mod messages;
pub(crate) mod users;

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};

use crate::auth::{self, ApiKey};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::json::BodyLimit;

/// What every handler can reach.
pub(crate) struct AppState<E> {
    /// The door into the engine.
    pub(crate) engine: E,
}

/// Shared state as handlers extract it.
pub(crate) type Shared<E> = Arc<AppState<E>>;

/// The whole API as one router.
pub(crate) fn router<E: Engine>(
    state: Shared<E>,
    api_key: Arc<ApiKey>,
    body_bytes_max: usize,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/users/{user}",
            put(users::put_user::<E>)
                .get(users::get_user::<E>)
                .delete(users::delete_user::<E>),
        )
        .route("/v1/users/{user}/tokens", post(users::mint_token::<E>))
        .route("/v1/messages", post(messages::send::<E>))
        .route(
            "/v1/conversations/{conv}/messages",
            get(messages::history::<E>),
        )
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
}

/// `GET /healthz`: the listener accepts and the runtime serves.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
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
