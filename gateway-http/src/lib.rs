//! Tern's business HTTP API: axum on its own small tokio runtime, reaching the
//! engine only through [`tern_engine::EngineHandle`].
//!
//! # Layout
//! - `lib.rs`: [`start`] and [`Gateway::shutdown`]: runtime, listener, serve
//!   loop, graceful stop.
//! - `routes/`: the router (`routes/mod.rs`) and one file per resource
//!   (`users.rs`, `messages.rs`); handlers translate HTTP DTOs to engine calls.
//! - `auth.rs`: the API-key middleware on every `/v1` path.
//! - `json.rs`: body, path and query extractors whose every rejection is a
//!   JSON [`ApiError`](error::ApiError).
//! - `error.rs`: the error body and the ONE mapping from protocol error codes
//!   to HTTP statuses.
//! - `engine.rs`: the narrow trait the handlers call; implemented by
//!   `EngineHandle`, and by a fake in the unit tests.
//! - `metrics.rs`: `GET /metrics` (Prometheus text, written by hand) and
//!   the gateway's own counters.
//! - `openapi.rs`: `GET /openapi.json`, generated from the handlers and DTOs
//!   with utoipa.
//! - `webhooks/`: event webhooks (batched, signed, retried) and the
//!   before-send hook.
//! - `web_assets.rs`: the embedded browser client (`/app/`) and dashboard
//!   (`/admin/`); `demo.rs`: demo sign-in (`--demo`); `admin_stats.rs`:
//!   `GET /admin/stats`, the dashboard's JSON counters.
//!
//! # Start-up order
//! The engine needs its before-send hook when it starts, and the gateway
//! needs the running engine's handle; so the runtime comes first:
//! ```text
//! let rt = Runtime::new()?;                       // tokio runtime + HTTP client
//! let hook = rt.before_send_hook(before_cfg)?;    // give it to the engine
//! let engine = /* start the engine with `hook` and an event queue */;
//! let gw = start(gw_cfg, engine.handle(), rt)?;   // serve; drains the events
//! ```
//!
//! # Architecture invariants
//! - This is the only crate that speaks HTTP business routes and owns their
//!   DTOs; the engine never sees an HTTP type.
//! - Every response, errors included, is JSON (`{"error":{"code","message"}}`
//!   for errors); axum's plain-text rejections never reach a client.
//! - No handler touches a client socket of the engine: everything goes through
//!   the handle, so an HTTP send has the same path and guarantees as a
//!   WebSocket send.

mod admin_stats;
mod auth;
mod demo;
mod engine;
mod error;
mod json;
mod metrics;
mod openapi;
mod routes;
mod web_assets;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tern_engine::{BeforeSend, EngineEvent, EngineHandle};
use tokio::sync::watch;

pub use webhooks::{BeforeSendConfig, WebhookConfig};

/// Default request body limit (PROTOCOL.md: "JSON bodies of at most 1 MiB").
pub const BODY_BYTES_MAX_DEFAULT: usize = 1024 * 1024;

/// Worker threads of the gateway's runtime. The gateway only parses JSON and
/// awaits the engine; the shards own the cores, so two workers are plenty.
const WORKER_THREADS: usize = 2;

/// How long [`Gateway::shutdown`] lets in-flight requests finish after the
/// listener closed. A send that is already with the engine completes there
/// regardless; this only bounds how long we wait to answer it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long the runtime waits for its remaining tasks once the serve loop has
/// returned (connections abandoned after [`SHUTDOWN_GRACE`]).
const RUNTIME_STOP_MAX: Duration = Duration::from_secs(1);

/// Pooled idle connections kept per webhook host: one batch is in flight at
/// a time, before-send checks run in parallel; more idle ones only hold fds.
const HTTP_CLIENT_IDLE_PER_HOST: usize = 32;

/// What [`start`] needs.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Address to listen on (PROTOCOL.md default `0.0.0.0:7701`).
    pub addr: SocketAddr,
    /// The API key every `/v1` request must present as `Bearer`. Not empty.
    pub api_key: String,
    /// Largest accepted request body; larger ones get 413 `too_large`.
    pub body_bytes_max: usize,
    /// Where engine events are posted; `None`: nowhere.
    pub webhook: Option<WebhookConfig>,
    /// The engine's bounded event queue, drained by the gateway into the
    /// webhook. Give it together with `webhook`: without one it is dropped
    /// (and the engine should not produce events at all).
    pub events: Option<crossbeam_channel::Receiver<EngineEvent>>,
    /// Demo mode (`tern serve --demo`): `POST /demo/session` mints tokens
    /// without the API key. Off by default.
    pub demo: bool,
    /// The engine's WebSocket port, told to the browser client by
    /// `/app/config.json`.
    pub ws_port: u16,
    /// A second listener serving the same API over TLS; `None`: plain only.
    pub tls: Option<HttpsConfig>,
}

/// The HTTPS listener: the same router as the plain one, over
/// [`tern_tls::TlsListener`] (bounded handshakes and connections).
#[derive(Clone)]
pub struct HttpsConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Certificate, key and ALPN (`h2`, `http/1.1`).
    pub server: Arc<tern_tls::rustls::ServerConfig>,
    /// Bound on live TLS connections.
    pub connections_max: usize,
}

impl GatewayConfig {
    /// A config without webhooks.
    pub fn new(addr: SocketAddr, api_key: impl Into<String>) -> Self {
        Self {
            addr,
            api_key: api_key.into(),
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            webhook: None,
            events: None,
            tls: None,
            demo: false,
            ws_port: DEFAULT_WS_PORT,
        }
    }
}

/// PROTOCOL.md's default WebSocket port, for [`GatewayConfig::new`].
const DEFAULT_WS_PORT: u16 = 7700;

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("GatewayConfig")
            .field("addr", &self.addr)
            .field("api_key", &"..")
            .field("body_bytes_max", &self.body_bytes_max)
            .field("webhook", &self.webhook)
            .field("events", &self.events.is_some())
            .field("tls", &self.tls.as_ref().map(|t| t.addr))
            .field("demo", &self.demo)
            .field("ws_port", &self.ws_port)
            .finish()
    }
}

/// Why the gateway could not start.
#[derive(thiserror::Error, Debug)]
pub enum GatewayError {
    /// An empty key would let `Authorization: Bearer ` through.
    #[error("the API key is empty")]
    EmptyApiKey,
    /// The tokio runtime could not be built (threads, epoll).
    #[error("cannot build the HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The address is taken, not local, or not permitted.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A thread of the gateway (serving, webhook drain) could not be spawned.
    #[error("cannot spawn a gateway thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A webhook or before-send setting is out of bounds or unusable.
    #[error("invalid hook configuration: {0}")]
    Config(String),
    /// The HTTP client for webhooks could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The HTTPS listener could not be bound.
    #[error("HTTPS listener: {0}")]
    Tls(#[source] tern_tls::TlsError),
}

/// The gateway's tokio runtime and HTTP client, made before the engine starts
/// so the engine can be given [`Runtime::before_send_hook`]; then handed to
/// [`start`], which serves on it.
pub struct Runtime {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Runtime {
    /// Build the runtime (its worker threads start now) and the client.
    pub fn new() -> Result<Runtime, GatewayError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("tern-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(GatewayError::Runtime)?;
        let client = {
            let _guard = rt.enter();
            reqwest::Client::builder()
                // A signed body goes only where the operator pointed it.
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(HTTP_CLIENT_IDLE_PER_HOST)
                .tcp_nodelay(true)
                .build()
                .map_err(GatewayError::HttpClient)?
        };
        Ok(Runtime { rt, client })
    }

    /// The before-send hook for the engine: each check is a signed POST from
    /// this runtime (see [`webhooks`]). Errors: `Config` for a bad URL,
    /// empty secret or out-of-range timeout.
    pub fn before_send_hook(
        &self,
        cfg: BeforeSendConfig,
    ) -> Result<Arc<dyn BeforeSend>, GatewayError> {
        cfg.validate()?;
        Ok(Arc::new(webhooks::HttpBeforeSend::new(
            cfg,
            self.rt.handle().clone(),
            self.client.clone(),
        )))
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// A running gateway. Dropping it stops it like [`Gateway::shutdown`].
pub struct Gateway {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    /// `true` asks the serve loop to stop; dropping the sender does too.
    stop: watch::Sender<bool>,
    /// The thread that owns the runtime; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

/// Bind the listener (synchronously, so the caller knows the port is taken
/// before it reports ready), start the webhook dispatcher and serve on
/// `runtime`. Returns once the socket is listening: connections queue in the
/// backlog until the serve loop accepts them.
pub fn start(
    cfg: GatewayConfig,
    engine: EngineHandle,
    runtime: Runtime,
) -> Result<Gateway, GatewayError> {
    start_with(cfg, engine, runtime)
}

/// [`start`] over any [`engine::Engine`], so tests can serve a fake one.
fn start_with<E: engine::Engine>(
    cfg: GatewayConfig,
    engine: E,
    runtime: Runtime,
) -> Result<Gateway, GatewayError> {
    if cfg.api_key.is_empty() {
        return Err(GatewayError::EmptyApiKey);
    }
    if let Some(w) = &cfg.webhook {
        w.validate()?;
    }
    let Runtime { rt, client } = runtime;
    let bind_err = |source| GatewayError::Bind {
        addr: cfg.addr,
        source,
    };
    let listener = {
        // Registering the socket with the reactor needs the runtime's context.
        let _guard = rt.enter();
        tern_tls::bind_tcp(cfg.addr).map_err(bind_err)?
    };
    let local_addr = listener.local_addr().map_err(bind_err)?;
    let tls_listener = match &cfg.tls {
        Some(t) => {
            let _guard = rt.enter();
            Some(
                tern_tls::TlsListener::bind(t.addr, t.server.clone(), t.connections_max, None)
                    .map_err(GatewayError::Tls)?,
            )
        }
        None => None,
    };
    let tls_local_addr = tls_listener.as_ref().map(|l| l.local_addr());

    let counters = Arc::new(metrics::GatewayCounters::default());
    let dispatcher = match (cfg.webhook, cfg.events) {
        (Some(webhook), Some(events)) => Some(webhooks::Dispatcher::spawn(
            webhook,
            events,
            rt.handle(),
            client,
            counters.webhook.clone(),
        )?),
        (Some(_), None) => {
            tracing::warn!("a webhook is configured but the engine gives no events");
            None
        }
        (None, Some(_)) => {
            tracing::debug!("no webhook configured: engine events are not drained");
            None
        }
        (None, None) => None,
    };
    let app = routes::router(
        Arc::new(routes::AppState { engine, counters }),
        Arc::new(auth::ApiKey::new(&cfg.api_key)),
        cfg.body_bytes_max,
    )
    .layer(axum::Extension(Arc::new(web_assets::WebState {
        demo: cfg.demo.then(demo::DemoLimits::new),
        ws_port: cfg.ws_port,
    })));
    if cfg.demo {
        tracing::warn!(
            "demo mode: anyone reaching {local_addr} can sign in as any user (POST /demo/session)"
        );
    }
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("tern-http-serve".into())
        .spawn(move || serve(rt, listener, tls_listener, app, stop_rx, dispatcher))
        .map_err(GatewayError::Thread)?;
    tracing::info!(%local_addr, "HTTP gateway listening");
    if let Some(a) = tls_local_addr {
        tracing::info!(%a, "HTTPS gateway listening");
    }
    Ok(Gateway {
        local_addr,
        tls_local_addr,
        stop,
        thread: Some(thread),
    })
}

impl Gateway {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The HTTPS listener's address, when one is configured.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// Graceful stop: close the listener, let in-flight requests finish (at
    /// most [`SHUTDOWN_GRACE`]), close idle keep-alive connections, deliver
    /// the queued webhook events (for a short grace), join the thread. Blocks; do not call it from a task of the gateway's runtime.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // `send_replace` works even when the serve loop already ended.
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the HTTP gateway thread panicked");
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Body of the serving thread: run until asked to stop, then drain.
fn serve(
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    tls_listener: Option<tern_tls::TlsListener>,
    app: axum::Router,
    stop: watch::Receiver<bool>,
    dispatcher: Option<webhooks::Dispatcher>,
) {
    rt.block_on(async move {
        let mut graceful = stop.clone();
        let mut tls_graceful = stop.clone();
        let mut deadline = stop;
        // Small JSON answers must not wait for Nagle.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
        // Stops accepting, lets each connection finish its current request
        // and closes idle ones. A dropped sender counts as "stop".
        let tls_server = tls_listener.map(|l| {
            axum::serve(l, app.clone()).with_graceful_shutdown(async move {
                let _ = tls_graceful.wait_for(|stop| *stop).await;
            })
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        });
        let server = async move {
            match tls_server {
                Some(tls) => {
                    let (plain, tls) = tokio::join!(server, tls);
                    plain.and(tls)
                }
                None => server.await,
            }
        };
        let deadline = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            res = server => {
                if let Err(e) = res {
                    tracing::error!("HTTP gateway stopped: {e}");
                }
            }
            () = deadline => {
                tracing::warn!(
                    "HTTP requests still in flight {}s after shutdown began; dropping them",
                    SHUTDOWN_GRACE.as_secs()
                );
            }
        }
    });
    if let Some(d) = dispatcher {
        d.stop(&rt);
    }
    rt.shutdown_timeout(RUNTIME_STOP_MAX);
    tracing::info!("HTTP gateway stopped");
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod web_tests;
