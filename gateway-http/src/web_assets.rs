//! The browser chat client (`/app/`) and the operations dashboard
//! (`/admin/`), built from `web/` and embedded at compile time by
//! `build.rs`; `/app/config.json` tells the page where the WebSocket
//! endpoint is and whether demo sign-in is on.
//!
//! Both pages speak only the public contract (the WebSocket protocol, the
//! `/v1` API with the key the operator types in, and the demo routes of
//! [`crate::demo`]); nothing here is privileged.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use crate::demo::DemoLimits;
use crate::error::ApiError;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// What the web routes need from the gateway's configuration, put into
/// request extensions by [`crate::start`].
pub(crate) struct WebState {
    /// The demo limiter; `None`: demo mode is off and `/demo/*` answers 404.
    pub(crate) demo: Option<DemoLimits>,
    /// Port of the engine's WebSocket listener; the page connects to it on
    /// the host it was loaded from.
    pub(crate) ws_port: u16,
}

/// Shown at `/app/` and `/admin/` when the binary was built without the
/// web assets (node was not installed, or `make web` never ran).
const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Tern</title>\
<h1>The web assets are not built into this binary</h1>\
<p>Build them and then the server: <code>make build</code> (or \
<code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>, then \
<code>cargo build --release</code>), and run <code>tern serve --demo</code> again.</p>";

/// Pages may load only their own scripts and styles; images come from any
/// URL (media messages are links), sockets go to the engine's port.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src * data: blob:; media-src * data: blob:; connect-src 'self' ws: wss:; \
frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

/// Hashed build output under `/static/` never changes under its name.
const STATIC_CACHE: &str = "public, max-age=86400";

/// The web routes, merged into the API router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/app/") }))
        .route("/app", get(|| async { Redirect::permanent("/app/") }))
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/app/", get(|| async { page("app/index.html") }))
        .route("/admin/", get(|| async { page("admin/index.html") }))
        .route("/app/config.json", get(config))
        .route("/static/{*file}", get(static_file))
}

/// Answer of `GET /app/config.json`.
#[derive(serde::Serialize)]
struct ConfigDto {
    /// `POST /demo/session` works.
    demo: bool,
    /// The engine's WebSocket port on this host.
    ws_port: u16,
    /// Path of the WebSocket endpoint.
    ws_path: &'static str,
}

async fn config(Extension(web): Extension<Arc<WebState>>) -> Response {
    let mut res = Json(ConfigDto {
        demo: web.demo.is_some(),
        ws_port: web.ws_port,
        ws_path: "/ws",
    })
    .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The embedded file at `path`, if the assets were built.
fn find(path: &str) -> Option<&'static [u8]> {
    embedded::FILES
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| embedded::FILES[i].1)
}

fn page(path: &str) -> Response {
    let (status, body) = match find(path) {
        Some(bytes) => (StatusCode::OK, bytes),
        None => (StatusCode::OK, NOT_BUILT.as_bytes()),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn static_file(Path(file): Path<String>) -> Response {
    // The path is only a lookup key into a fixed table: `..` finds nothing.
    match find(&format!("static/{file}")) {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, mime_of(&file)),
                (header::CACHE_CONTROL, STATIC_CACHE),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        None => ApiError::not_found("no such file").into_response(),
    }
}

/// Content type by extension, for the kinds of files a Vite build emits.
fn mime_of(file: &str) -> &'static str {
    let ext = file.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        let files = embedded::FILES;
        assert!(files.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn mime_types() {
        assert_eq!(mime_of("a/b.js"), "text/javascript; charset=utf-8");
        assert_eq!(mime_of("x.svg"), "image/svg+xml");
        assert_eq!(mime_of("noext"), "application/octet-stream");
    }

    #[test]
    fn traversal_finds_nothing() {
        assert!(find("static/../../Cargo.toml").is_none());
        assert!(find("").is_none());
    }
}
