//! Engine events → webhook batches.
//!
//! ```text
//! engine ──bounded crossbeam──▶ drain thread ──bounded mpsc (queue_max)──▶ sender task ──POST──▶ receiver
//! ```
//! - The drain thread blocks on the engine's queue (a crossbeam channel the
//!   tokio runtime cannot await), filters and encodes each event once, and
//!   `try_send`s it: a full queue drops the event and counts it, so the
//!   engine's queue keeps draining whatever the receiver does.
//! - The sender task collects up to `batch_max` events, waiting at most
//!   `flush_ms` after the first, and POSTs them. One batch is in flight at a
//!   time, so the receiver sees events in the order the engine emitted them.
//!   A failed POST is retried after `BACKOFF_BASE × 2^n` (capped at
//!   [`BACKOFF_MAX`]), `retries` times; then the batch is dropped and counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;
use serde_json::value::RawValue;
use tern_engine::EngineEvent;
use tern_proto::{ConvId, DeviceId, GroupId, Kind, RawJson, UserId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{signed_post, WarnLimiter, WebhookConfig};
use super::{EVENT_GROUP_CHANGED, EVENT_MESSAGE_SENT, EVENT_USER_OFFLINE, EVENT_USER_ONLINE};
use crate::metrics::WebhookCounters;
use crate::GatewayError;

/// First retry delay; doubled for each further retry.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay between two attempts: beyond this the receiver is down, and
/// waiting longer only lets the queue overflow sooner.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How much of a receiver's answer is read (and ignored) so its connection
/// goes back to the pool; a longer answer costs the connection instead.
const ANSWER_READ_MAX: usize = 64 * 1024;
/// How often the drain thread looks at its stop flag while the engine is
/// quiet; bounds how long stopping takes.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long a stopping gateway keeps delivering what is queued before it
/// gives up on the rest.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Delay before retry `n` (0-based).
pub(super) fn backoff(n: u32) -> Duration {
    BACKOFF_BASE
        .checked_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
        .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX))
}

/// Which event types the webhook wants.
#[derive(Clone, Copy, Debug)]
struct Filter {
    message_sent: bool,
    user_online: bool,
    user_offline: bool,
    group_changed: bool,
}

impl Filter {
    fn new(events: &[String]) -> Self {
        let wants = |name: &str| events.is_empty() || events.iter().any(|e| e == name);
        Self {
            message_sent: wants(EVENT_MESSAGE_SENT),
            user_online: wants(EVENT_USER_ONLINE),
            user_offline: wants(EVENT_USER_OFFLINE),
            group_changed: wants(EVENT_GROUP_CHANGED),
        }
    }

    fn accepts(&self, ev: &EngineEvent) -> bool {
        match ev {
            EngineEvent::MessageSent { .. } => self.message_sent,
            EngineEvent::UserOnline { .. } => self.user_online,
            EngineEvent::UserOffline { .. } => self.user_offline,
            EngineEvent::GroupChanged { .. } => self.group_changed,
        }
    }
}

/// An event as posted: `{"type": "...", ...fields..., "ts"}`.
#[derive(Serialize)]
#[serde(tag = "type")]
enum WireEvent<'a> {
    #[serde(rename = "message.sent")]
    MessageSent {
        conv: &'a ConvId,
        seq: u64,
        from: &'a UserId,
        device: &'a str,
        cmid: &'a str,
        kind: Kind,
        body: &'a RawJson,
        ts: u64,
    },
    #[serde(rename = "user.online")]
    UserOnline {
        user: &'a UserId,
        device: &'a DeviceId,
        ts: u64,
    },
    #[serde(rename = "user.offline")]
    UserOffline {
        user: &'a UserId,
        device: &'a DeviceId,
        ts: u64,
    },
    #[serde(rename = "group.changed")]
    GroupChanged {
        group: &'a GroupId,
        seq: u64,
        code: u16,
        data: &'a RawJson,
        ts: u64,
    },
}

/// The JSON object of one event.
pub(super) fn encode(ev: &EngineEvent) -> Result<Box<RawValue>, serde_json::Error> {
    let wire = match ev {
        EngineEvent::MessageSent {
            conv,
            seq,
            from,
            device,
            cmid,
            kind,
            body,
            ts,
        } => WireEvent::MessageSent {
            conv,
            seq: *seq,
            from,
            device,
            cmid,
            kind: *kind,
            body,
            ts: *ts,
        },
        EngineEvent::UserOnline { user, device, ts } => WireEvent::UserOnline {
            user,
            device,
            ts: *ts,
        },
        EngineEvent::UserOffline { user, device, ts } => WireEvent::UserOffline {
            user,
            device,
            ts: *ts,
        },
        EngineEvent::GroupChanged {
            group,
            seq,
            code,
            data,
            ts,
        } => WireEvent::GroupChanged {
            group,
            seq: *seq,
            code: *code,
            data,
            ts: *ts,
        },
    };
    serde_json::value::to_raw_value(&wire)
}

/// `{"events":[e1,e2,...]}` from encoded events, without re-parsing them.
pub(super) fn batch_body(events: &[Box<RawValue>]) -> Vec<u8> {
    let len: usize = events.iter().map(|e| e.get().len() + 1).sum();
    let mut out = Vec::with_capacity(len + 16);
    out.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.get().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// The running dispatcher: the drain thread and the sender task.
pub(crate) struct Dispatcher {
    stop: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
    sender: tokio::task::JoinHandle<()>,
    counters: Arc<WebhookCounters>,
}

impl Dispatcher {
    /// Start draining `events` into batches posted per `cfg` (validated).
    pub(crate) fn spawn(
        cfg: WebhookConfig,
        events: Receiver<EngineEvent>,
        rt: &tokio::runtime::Handle,
        client: reqwest::Client,
        counters: Arc<WebhookCounters>,
    ) -> Result<Dispatcher, GatewayError> {
        let (tx, rx) = mpsc::channel(cfg.queue_max);
        let stop = Arc::new(AtomicBool::new(false));
        let drain = {
            let stop = stop.clone();
            let counters = counters.clone();
            let filter = Filter::new(&cfg.events);
            std::thread::Builder::new()
                .name("tern-webhook-drain".into())
                .spawn(move || drain(events, tx, filter, &stop, &counters))
                .map_err(GatewayError::Thread)?
        };
        let sender = rt.spawn(send_loop(rx, cfg, client, counters.clone()));
        Ok(Dispatcher {
            stop,
            drain: Some(drain),
            sender,
            counters,
        })
    }

    /// Stop taking events, deliver what is queued within [`STOP_GRACE`],
    /// give up on the rest. Blocks; call it outside the runtime.
    pub(crate) fn stop(mut self, rt: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drain) = self.drain.take() {
            if drain.join().is_err() {
                tracing::error!("the webhook drain thread panicked");
            }
        }
        // The drain thread dropped the queue's sender: the task ends once
        // the queue is empty.
        let sender = &mut self.sender;
        let finished = rt.block_on(async { tokio::time::timeout(STOP_GRACE, sender).await });
        if finished.is_err() {
            self.sender.abort();
            let left = self.counters.queue_depth.load(Ordering::Relaxed);
            tracing::warn!(
                "webhook receiver still busy {}s after shutdown began; {left} queued events not delivered",
                STOP_GRACE.as_secs()
            );
        }
    }
}

impl Drop for Dispatcher {
    /// A dispatcher dropped without [`Dispatcher::stop`] (a failed start)
    /// still ends its thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Body of the drain thread. Once asked to stop it still forwards what the
/// engine had queued by then (at most the engine queue's bound), so events
/// emitted before shutdown are not lost to a race.
fn drain(
    events: Receiver<EngineEvent>,
    tx: mpsc::Sender<Box<RawValue>>,
    filter: Filter,
    stop: &AtomicBool,
    counters: &WebhookCounters,
) {
    let full = WarnLimiter::default();
    let forward = |ev: EngineEvent| -> bool {
        if !filter.accepts(&ev) {
            return true;
        }
        let json = match encode(&ev) {
            Ok(json) => json,
            Err(e) => {
                // Only a bug can get here (every field serializes).
                tracing::error!("cannot encode a webhook event: {e}");
                return true;
            }
        };
        // Counted before the send so the sender's decrement never wraps.
        counters.queue_depth.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(json) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                full.warn(|| "webhook queue full; dropping events".to_owned());
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match events.recv_timeout(DRAIN_POLL) {
            Ok(ev) => {
                if !forward(ev) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The engine stopped: nothing more will come.
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
    // A snapshot of the length bounds the loop while the engine still emits.
    for ev in events.try_iter().take(events.len()) {
        if !forward(ev) {
            return;
        }
    }
}

/// Body of the sender task: batch, post, retry, count.
async fn send_loop(
    mut rx: mpsc::Receiver<Box<RawValue>>,
    cfg: WebhookConfig,
    client: reqwest::Client,
    counters: Arc<WebhookCounters>,
) {
    let flush = Duration::from_millis(cfg.flush_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let failures = WarnLimiter::default();
    let mut batch: Vec<Box<RawValue>> = Vec::with_capacity(cfg.batch_max);
    loop {
        // Wait for the first event of a batch (0 = queue closed and empty).
        if rx.recv_many(&mut batch, cfg.batch_max).await == 0 {
            return;
        }
        let deadline = Instant::now() + flush;
        while batch.len() < cfg.batch_max {
            let room = cfg.batch_max - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        counters.queue_depth.fetch_sub(n, Ordering::Relaxed);
        let body = batch_body(&batch);
        batch.clear();
        match post_with_retries(&client, &cfg, body, timeout).await {
            Ok(()) => {
                counters.delivered.fetch_add(n, Ordering::Relaxed);
            }
            Err(last) => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                failures.warn(|| {
                    format!(
                        "webhook {}: dropping {n} events after {} attempts; last error: {last}",
                        cfg.url,
                        u64::from(cfg.retries) + 1
                    )
                });
            }
        }
    }
}

/// POST `body` until a 2xx, at most `1 + retries` times; the last error.
async fn post_with_retries(
    client: &reqwest::Client,
    cfg: &WebhookConfig,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..=cfg.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let req = signed_post(client, &cfg.url, &cfg.secret, body.clone(), timeout);
        match req.send().await {
            Ok(mut res) => {
                let status = res.status();
                // Read the (small) answer so the connection can be reused.
                let mut read = 0;
                while let Ok(Some(chunk)) = res.chunk().await {
                    read += chunk.len();
                    if read > ANSWER_READ_MAX {
                        break;
                    }
                }
                if status.is_success() {
                    return Ok(());
                }
                last = format!("HTTP {status}");
            }
            Err(e) => last = e.to_string(),
        }
        tracing::debug!("webhook attempt {attempt} failed: {last}");
    }
    Err(last)
}
