//! Outgoing HTTP: event webhooks (after the fact, batched) and the
//! before-send hook (a veto the engine waits for).
//!
//! # Layout
//! - `mod.rs`: the two configs, their validation, the signature and a
//!   rate-limited warning.
//! - `dispatcher.rs`: engine events → bounded queue → signed JSON batches,
//!   retried with backoff.
//! - `before_send.rs`: [`tern_engine::BeforeSend`] over HTTP.
//!
//! # Wire contract (both kinds of call)
//! - `POST <url>` with a JSON body and `Content-Type: application/json`.
//! - `X-Tern-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`: the
//!   receiver recomputes it over the bytes it read before parsing them.
//! - `X-Tern-Timestamp: <ms since the Unix epoch>` when the call was made
//!   (each retry has its own). It is not covered by the signature; the events
//!   themselves carry their `ts`.
//! - Redirects are not followed: a 3xx counts as a failure, so a signed body
//!   never travels to a host the operator did not configure.
//!
//! # Architecture invariants
//! - Nothing here blocks the engine: events arrive through the engine's
//!   bounded queue and are moved by a thread of ours into a second bounded
//!   queue; a full queue drops and counts. The veto answers through a
//!   callback, always exactly once (a drop guard answers with the failure
//!   policy if the task never finished).

mod before_send;
mod dispatcher;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::GatewayError;

pub(crate) use before_send::HttpBeforeSend;
pub(crate) use dispatcher::Dispatcher;

/// The event types a webhook can subscribe to, as they appear in `type`.
pub const EVENT_TYPES: [&str; 4] = [
    EVENT_MESSAGE_SENT,
    EVENT_USER_ONLINE,
    EVENT_USER_OFFLINE,
    EVENT_GROUP_CHANGED,
];
/// A message was stored.
pub const EVENT_MESSAGE_SENT: &str = "message.sent";
/// A device of a user connected.
pub const EVENT_USER_ONLINE: &str = "user.online";
/// A device of a user disconnected.
pub const EVENT_USER_OFFLINE: &str = "user.offline";
/// A group event (1501...1520) was stored.
pub const EVENT_GROUP_CHANGED: &str = "group.changed";

/// Default events per POST: big enough to amortise a request, small enough
/// that a receiver parses one body in milliseconds.
pub const WEBHOOK_BATCH_MAX_DEFAULT: usize = 100;
/// Default wait, after a batch's first event, for more events to join it.
pub const WEBHOOK_FLUSH_MS_DEFAULT: u64 = 200;
/// Default bound of the gateway's event queue: at ~1 KiB an event, ~100 MiB
/// at worst, and several minutes of a busy server's events while the
/// receiver is down.
pub const WEBHOOK_QUEUE_MAX_DEFAULT: usize = 100_000;
/// Default retries after a failed POST (so 6 attempts in all).
pub const WEBHOOK_RETRIES_DEFAULT: u32 = 5;
/// Default time one POST may take, connect to last byte.
pub const WEBHOOK_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default time the before-send hook may take; a send waits this long at
/// worst, so it is short.
pub const BEFORE_SEND_TIMEOUT_MS_DEFAULT: u64 = 500;

/// Largest accepted `batch_max`: a bigger batch would be a multi-megabyte
/// body that many receivers refuse.
const WEBHOOK_BATCH_MAX_MAX: usize = 10_000;
/// Largest accepted `queue_max` (each queued event is ~1 KiB).
const WEBHOOK_QUEUE_MAX_MAX: usize = 10_000_000;
/// Largest accepted `retries`: with capped backoff, 100 retries already keep
/// one batch for many minutes while the queue behind it fills.
const WEBHOOK_RETRIES_MAX: u32 = 100;
/// Largest accepted timeout or flush interval (one minute): anything longer
/// is a configuration mistake, not a policy.
const TIMEOUT_MS_MAX: u64 = 60_000;

/// Where and how engine events are posted (PROTOCOL.md is silent on webhooks;
/// see the module docs for the wire contract).
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives the batches.
    pub url: String,
    /// HMAC-SHA256 key of `X-Tern-Signature`. Not empty.
    pub secret: String,
    /// Subset of [`EVENT_TYPES`] to deliver; empty = all.
    pub events: Vec<String>,
    /// Most events per POST ([`WEBHOOK_BATCH_MAX_DEFAULT`]).
    pub batch_max: usize,
    /// Longest wait for a batch to fill, ms ([`WEBHOOK_FLUSH_MS_DEFAULT`]).
    pub flush_ms: u64,
    /// Bound of the event queue; beyond it events are dropped and counted
    /// ([`WEBHOOK_QUEUE_MAX_DEFAULT`]).
    pub queue_max: usize,
    /// Retries of a failed POST (non-2xx, timeout, connection error) before
    /// its events are dropped and counted ([`WEBHOOK_RETRIES_DEFAULT`]).
    pub retries: u32,
    /// Time one POST may take, ms ([`WEBHOOK_TIMEOUT_MS_DEFAULT`]).
    pub timeout_ms: u64,
}

impl WebhookConfig {
    /// A config with every default.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            events: Vec::new(),
            batch_max: WEBHOOK_BATCH_MAX_DEFAULT,
            flush_ms: WEBHOOK_FLUSH_MS_DEFAULT,
            queue_max: WEBHOOK_QUEUE_MAX_DEFAULT,
            retries: WEBHOOK_RETRIES_DEFAULT,
            timeout_ms: WEBHOOK_TIMEOUT_MS_DEFAULT,
        }
    }

    /// Every field within its bounds, the URL usable, the events known.
    pub(crate) fn validate(&self) -> Result<(), GatewayError> {
        check_url("webhook.url", &self.url)?;
        check_secret("webhook.secret", &self.secret)?;
        for e in &self.events {
            if !EVENT_TYPES.contains(&e.as_str()) {
                return Err(config_err(format!(
                    "webhook.events: unknown event {e:?} (known: {})",
                    EVENT_TYPES.join(", ")
                )));
            }
        }
        check_range(
            "webhook.batch_max",
            self.batch_max,
            1,
            WEBHOOK_BATCH_MAX_MAX,
        )?;
        check_range("webhook.flush_ms", self.flush_ms, 1, TIMEOUT_MS_MAX)?;
        check_range(
            "webhook.queue_max",
            self.queue_max,
            1,
            WEBHOOK_QUEUE_MAX_MAX,
        )?;
        check_range("webhook.retries", self.retries, 0, WEBHOOK_RETRIES_MAX)?;
        check_range("webhook.timeout_ms", self.timeout_ms, 1, TIMEOUT_MS_MAX)
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"..")
            .field("events", &self.events)
            .field("batch_max", &self.batch_max)
            .field("flush_ms", &self.flush_ms)
            .field("queue_max", &self.queue_max)
            .field("retries", &self.retries)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The before-send hook: asked before every send is stored.
#[derive(Clone)]
pub struct BeforeSendConfig {
    /// `http://` or `https://` URL that answers `{"allow": bool, "reason"?}`.
    pub url: String,
    /// HMAC-SHA256 key of `X-Tern-Signature`. Not empty.
    pub secret: String,
    /// Longest wait for the answer, ms ([`BEFORE_SEND_TIMEOUT_MS_DEFAULT`]).
    pub timeout_ms: u64,
    /// On timeout, error or a non-2xx answer: `true` lets the send through,
    /// `false` rejects it with "before-send hook unavailable".
    pub fail_open: bool,
}

impl BeforeSendConfig {
    /// A fail-closed config with the default timeout.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            timeout_ms: BEFORE_SEND_TIMEOUT_MS_DEFAULT,
            fail_open: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), GatewayError> {
        check_url("before_send.url", &self.url)?;
        check_secret("before_send.secret", &self.secret)?;
        check_range("before_send.timeout_ms", self.timeout_ms, 1, TIMEOUT_MS_MAX)
    }
}

impl std::fmt::Debug for BeforeSendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeforeSendConfig")
            .field("url", &self.url)
            .field("secret", &"..")
            .field("timeout_ms", &self.timeout_ms)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

fn config_err(message: String) -> GatewayError {
    GatewayError::Config(message)
}

fn check_url(field: &str, url: &str) -> Result<(), GatewayError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| config_err(format!("{field}: {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(config_err(format!(
            "{field}: {url:?} must be an http:// or https:// URL with a host"
        )));
    }
    Ok(())
}

fn check_secret(field: &str, secret: &str) -> Result<(), GatewayError> {
    if secret.is_empty() {
        // An empty key signs, but anyone can forge the signature.
        return Err(config_err(format!("{field} is empty")));
    }
    Ok(())
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    min: T,
    max: T,
) -> Result<(), GatewayError> {
    if v < min || v > max {
        return Err(config_err(format!(
            "{field} must be in {min}..={max}, got {v}"
        )));
    }
    Ok(())
}

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "x-tern-signature";
/// Name of the timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-tern-timestamp";

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: `InvalidLength` is only returned by
    // MACs with a fixed key size.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC-SHA256 accepts keys of any length")
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity("sha256=".len() + 2 * digest.len());
    out.push_str("sha256=");
    for b in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// A signed POST of `body` to `url` (headers per the module docs).
fn signed_post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let sig = signature(secret.as_bytes(), &body);
    client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sig)
        .header(TIMESTAMP_HEADER, tern_engine::now_ms().to_string())
        .body(body)
}

/// How often a repeated warning may be logged: a dead receiver under load
/// would otherwise write a line per event.
const WARN_INTERVAL_MS: u64 = 10_000;

/// A warning logged at most once per [`WARN_INTERVAL_MS`], with the count of
/// the ones held back.
#[derive(Default)]
pub(crate) struct WarnLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    /// Log `msg` unless one was logged recently.
    pub(crate) fn warn(&self, msg: impl FnOnce() -> String) {
        let now = tern_engine::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_INTERVAL_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let held_back = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!("{} ({held_back} similar warnings held back)", msg());
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
