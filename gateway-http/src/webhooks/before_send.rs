//! [`tern_engine::BeforeSend`] over HTTP: each check is a task on the
//! gateway's runtime that POSTs `{conv, from, device, cmid, kind, body}` and
//! expects 2xx `{"allow": true}` or `{"allow": false, "reason": "..."}`.
//! A timeout, a transport error, a non-2xx answer or an answer that is not
//! such an object gets the failure policy: allow when `fail_open`, otherwise
//! reject with "before-send hook unavailable".

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_engine::{BeforeSend, BeforeSendRequest, Verdict};
use tern_proto::{ConvId, Kind, RawJson, UserId};
use tokio::sync::Semaphore;

use super::{signed_post, BeforeSendConfig, WarnLimiter};

/// Checks in flight at once. Each waits at most `timeout_ms`; beyond this
/// many the hook is overwhelmed, and queueing more would only add latency to
/// sends that will time out anyway, so the failure policy answers at once.
const INFLIGHT_MAX: usize = 4096;

/// Largest hook answer read: `{"allow":false,"reason":...}` is small.
const ANSWER_BYTES_MAX: usize = 16 * 1024;

/// Longest `reason` passed on to the sender (in `send_err`), in bytes.
const REASON_BYTES_MAX: usize = 512;

/// Reject message when the hook cannot be asked and the policy is closed.
pub(crate) const UNAVAILABLE_REASON: &str = "before-send hook unavailable";

/// Reject message when the hook says no without a reason.
pub(crate) const DEFAULT_REJECT_REASON: &str = "rejected by the before-send hook";

/// The hook. Holds a handle of the gateway's runtime and its HTTP client.
pub(crate) struct HttpBeforeSend {
    inner: Arc<Inner>,
    rt: tokio::runtime::Handle,
    inflight: Arc<Semaphore>,
}

struct Inner {
    cfg: BeforeSendConfig,
    client: reqwest::Client,
    warn: WarnLimiter,
}

impl HttpBeforeSend {
    /// `cfg` must be validated.
    pub(crate) fn new(
        cfg: BeforeSendConfig,
        rt: tokio::runtime::Handle,
        client: reqwest::Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                client,
                warn: WarnLimiter::default(),
            }),
            rt,
            inflight: Arc::new(Semaphore::new(INFLIGHT_MAX)),
        }
    }
}

impl Inner {
    /// The failure policy's verdict.
    fn fallback(&self) -> Verdict {
        if self.cfg.fail_open {
            Verdict::Allow
        } else {
            Verdict::Reject(UNAVAILABLE_REASON.to_owned())
        }
    }
}

/// The callback, answered exactly once: explicitly, or with the fallback
/// when dropped unanswered (the task was dropped because the runtime is
/// shutting down, or it panicked).
struct Answer {
    done: Option<Box<dyn FnOnce(Verdict) + Send>>,
    fallback: Verdict,
}

impl Answer {
    fn answer(mut self, verdict: Verdict) {
        if let Some(done) = self.done.take() {
            done(verdict);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(std::mem::replace(&mut self.fallback, Verdict::Allow));
        }
    }
}

impl BeforeSend for HttpBeforeSend {
    fn check(&self, req: BeforeSendRequest, done: Box<dyn FnOnce(Verdict) + Send>) {
        let answer = Answer {
            done: Some(done),
            fallback: self.inner.fallback(),
        };
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            self.inner.warn.warn(|| {
                format!("before-send hook: {INFLIGHT_MAX} checks in flight; applying the failure policy")
            });
            // Dropping `answer` applies the policy.
            return;
        };
        let inner = self.inner.clone();
        // On a runtime that is shutting down the task is dropped unrun, and
        // `answer`'s drop applies the policy.
        self.rt.spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(inner.cfg.timeout_ms);
            let verdict = match tokio::time::timeout(timeout, ask(&inner, &req, timeout)).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(why)) => {
                    inner
                        .warn
                        .warn(|| format!("before-send hook {}: {why}", inner.cfg.url));
                    inner.fallback()
                }
                Err(_) => {
                    inner.warn.warn(|| {
                        format!(
                            "before-send hook {}: no answer within {} ms",
                            inner.cfg.url, inner.cfg.timeout_ms
                        )
                    });
                    inner.fallback()
                }
            };
            answer.answer(verdict);
        });
    }
}

/// What the hook is sent.
#[derive(Serialize)]
struct HookRequest<'a> {
    conv: &'a ConvId,
    from: &'a UserId,
    device: &'a str,
    cmid: &'a str,
    kind: Kind,
    body: &'a RawJson,
}

/// What the hook answers; unknown fields are ignored.
#[derive(Deserialize)]
struct HookAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// One round trip; `Err` says why it did not give a verdict.
async fn ask(inner: &Inner, req: &BeforeSendRequest, timeout: Duration) -> Result<Verdict, String> {
    let body = serde_json::to_vec(&HookRequest {
        conv: &req.conv,
        from: &req.from,
        device: &req.device,
        cmid: &req.cmid,
        kind: req.kind,
        body: &req.body,
    })
    .map_err(|e| format!("cannot encode the request: {e}"))?;
    let mut res = signed_post(
        &inner.client,
        &inner.cfg.url,
        &inner.cfg.secret,
        body,
        timeout,
    )
    .send()
    .await
    .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("answered HTTP {}", res.status()));
    }
    let mut text = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        if text.len() + chunk.len() > ANSWER_BYTES_MAX {
            return Err(format!("answer longer than {ANSWER_BYTES_MAX} bytes"));
        }
        text.extend_from_slice(&chunk);
    }
    let answer: HookAnswer = serde_json::from_slice(&text)
        .map_err(|e| format!("answer is not {{\"allow\": bool, \"reason\"?: string}}: {e}"))?;
    Ok(if answer.allow {
        Verdict::Allow
    } else {
        let reason = answer
            .reason
            .filter(|r| !r.is_empty())
            .map_or_else(|| DEFAULT_REJECT_REASON.to_owned(), truncate_reason);
        Verdict::Reject(reason)
    })
}

/// `reason` cut to [`REASON_BYTES_MAX`] on a character boundary.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > REASON_BYTES_MAX {
        let mut end = REASON_BYTES_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        assert_eq!(truncate_reason("short".into()), "short");
        let long = "é".repeat(REASON_BYTES_MAX); // 2 bytes each
        let cut = truncate_reason(long);
        assert_eq!(cut.len(), REASON_BYTES_MAX);
        let odd = format!("x{}", "é".repeat(REASON_BYTES_MAX));
        let cut = truncate_reason(odd);
        assert_eq!(cut.len(), REASON_BYTES_MAX - 1);
        assert!(cut.is_char_boundary(cut.len()));
    }
}
