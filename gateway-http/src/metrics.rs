//! `GET /metrics`: the engine's counters and the gateway's own, written by
//! hand in the Prometheus text exposition format 0.0.4 (one `# HELP` and one
//! `# TYPE` line per family, then `name{labels} value` samples).
//!
//! The gateway's counters are plain atomics bumped on the request path and by
//! the webhook dispatcher; a scrape only reads them.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tern_engine::EngineMetrics;

/// `Content-Type` of the exposition format we write.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Lowest HTTP status code (the `http` crate refuses anything below).
const STATUS_MIN: u16 = 100;
/// One counter per possible status code, 100..=999 (the `http` crate's range),
/// so counting is a lock-free index instead of a map behind a lock.
const STATUS_SLOTS: usize = 900;

/// Counters of the webhook dispatcher (all in events, not batches).
#[derive(Default, Debug)]
pub(crate) struct WebhookCounters {
    /// Events waiting in the gateway's queue right now.
    pub(crate) queue_depth: AtomicU64,
    /// Events the receiver accepted (2xx).
    pub(crate) delivered: AtomicU64,
    /// Events dropped because the queue was full.
    pub(crate) dropped: AtomicU64,
    /// Events given up on after every retry failed.
    pub(crate) failed: AtomicU64,
}

/// Everything the gateway itself counts.
pub(crate) struct GatewayCounters {
    /// Answers per status code; index = code - [`STATUS_MIN`].
    http_by_status: Box<[AtomicU64]>,
    /// Shared with the webhook dispatcher.
    pub(crate) webhook: Arc<WebhookCounters>,
}

impl Default for GatewayCounters {
    fn default() -> Self {
        Self {
            http_by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            webhook: Arc::default(),
        }
    }
}

impl GatewayCounters {
    /// Count one answer with `status`.
    pub(crate) fn count_status(&self, status: u16) {
        let idx = usize::from(status.saturating_sub(STATUS_MIN));
        if let Some(slot) = self.http_by_status.get(idx) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (status, count) for every status answered at least once, ascending.
    fn http_counts(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.http_by_status
            .iter()
            .zip(STATUS_MIN..)
            .map(|(n, code)| (code, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
    }
}

/// Middleware: count every answer by status code, 401/403/404 included (it
/// sits outside the key check and the router).
pub(crate) async fn count_requests(
    State(counters): State<Arc<GatewayCounters>>,
    req: Request,
    next: Next,
) -> Response {
    let res = next.run(req).await;
    counters.count_status(res.status().as_u16());
    res
}

/// Writes families and samples; `String` writes cannot fail, so `write!`
/// results are ignored.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A one-sample family.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One sample per shard, labelled `shard="i"`.
    fn per_shard<T: Display>(&mut self, name: &str, kind: &str, help: &str, values: &[T]) {
        self.family(name, kind, help);
        for (shard_idx, v) in values.iter().enumerate() {
            self.sample(name, &[("shard", &shard_idx.to_string())], v);
        }
    }

    /// A histogram from cumulative `(upper bound, count)` buckets. The
    /// `+Inf` bucket is always written, equal to `count` (and never below
    /// a finite bucket, so the family stays valid if counters raced).
    fn histogram(&mut self, name: &str, help: &str, buckets: &[(f64, u64)], sum: f64, count: u64) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut highest = 0;
        for &(le, cumulative) in buckets.iter().filter(|(le, _)| le.is_finite()) {
            self.sample(&bucket, &[("le", &le.to_string())], cumulative);
            highest = highest.max(cumulative);
        }
        let count = count.max(highest);
        self.sample(&bucket, &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }
}

/// Label values escape `\`, `"` and newline (format 0.0.4).
fn escape_label_value(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            ch => out.push(ch),
        }
    }
}

/// Integer bucket bounds as floats, divided by `unit`; `u64::MAX` stands
/// for "no bound" and is left to the `+Inf` bucket.
fn buckets_f64(buckets: &[(u64, u64)], unit: f64) -> Vec<(f64, u64)> {
    buckets
        .iter()
        .filter(|(le, _)| *le != u64::MAX)
        // Dividing (correctly rounded) keeps 100 µs printing as `0.0001`;
        // multiplying by 1e-6 would print `0.00009999999999999999`.
        .map(|&(le, n)| (le as f64 / unit, n))
        .collect()
}

/// Microseconds per second.
const US_PER_S: f64 = 1e6;

/// The whole `/metrics` page.
pub(crate) fn render(e: &EngineMetrics, gw: &GatewayCounters) -> String {
    let mut x = Exposition {
        out: String::with_capacity(4096),
    };
    x.per_shard(
        "tern_connections",
        "gauge",
        "Open WebSocket connections per shard.",
        &e.connections_per_shard,
    );
    for (name, help, v) in [
        (
            "tern_messages_in_total",
            "Sends received (WebSocket and HTTP).",
            e.messages_in,
        ),
        (
            "tern_messages_stored_total",
            "Messages durably stored.",
            e.messages_stored,
        ),
        (
            "tern_deliveries_total",
            "Entries pushed to devices (first pushes).",
            e.deliveries,
        ),
        (
            "tern_redeliveries_total",
            "Entries pushed again after an acknowledgement timeout.",
            e.redeliveries,
        ),
        (
            "tern_notices_total",
            "Notice frames sent for large groups.",
            e.notices,
        ),
        (
            "tern_rate_limited_total",
            "Client frames refused with rate_limited.",
            e.rate_limited,
        ),
        (
            "tern_events_dropped_total",
            "Engine events dropped because the webhook event queue was full.",
            e.events_dropped,
        ),
    ] {
        x.single(name, "counter", help, v);
    }
    x.per_shard(
        "tern_queue_depth",
        "gauge",
        "Batches waiting in each shard's mesh inbox.",
        &e.queue_depth_per_shard,
    );
    x.histogram(
        "tern_fanout_size",
        "Recipients per stored entry.",
        &buckets_f64(&e.fanout_buckets, 1.0),
        e.fanout_sum as f64,
        e.fanout_count,
    );

    let s = &e.storage;
    x.histogram(
        "tern_storage_batch_size",
        "Requests per storage write batch.",
        &buckets_f64(&s.batch_size_buckets, 1.0),
        s.batch_size_sum as f64,
        s.batch_count,
    );
    x.histogram(
        "tern_storage_commit_seconds",
        "Duration of one storage batch commit (RocksDB write).",
        &buckets_f64(&s.commit_latency_us_buckets, US_PER_S),
        s.commit_latency_us_sum as f64 / US_PER_S,
        s.batch_count,
    );
    x.single(
        "tern_storage_entries_written_total",
        "counter",
        "Timeline entries written to storage.",
        s.entries_written,
    );
    x.single(
        "tern_storage_errors_total",
        "counter",
        "Storage requests answered with an error.",
        s.errors,
    );
    x.single(
        "tern_storage_queue_depth",
        "gauge",
        "Requests waiting for the storage writer.",
        s.queue_depth,
    );

    let w = &gw.webhook;
    x.single(
        "tern_webhook_queue_depth",
        "gauge",
        "Events waiting in the gateway's webhook queue.",
        w.queue_depth.load(Ordering::Relaxed),
    );
    for (name, help, v) in [
        (
            "tern_webhook_delivered_total",
            "Events the webhook receiver accepted.",
            &w.delivered,
        ),
        (
            "tern_webhook_dropped_total",
            "Events dropped because the gateway's webhook queue was full.",
            &w.dropped,
        ),
        (
            "tern_webhook_failed_total",
            "Events given up on after every delivery retry failed.",
            &w.failed,
        ),
    ] {
        x.single(name, "counter", help, v.load(Ordering::Relaxed));
    }

    x.family(
        "tern_http_requests_total",
        "counter",
        "HTTP answers of the gateway by status code.",
    );
    for (code, n) in gw.http_counts() {
        x.sample(
            "tern_http_requests_total",
            &[("code", &code.to_string())],
            n,
        );
    }
    x.out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks the text the way a scraper reads it and returns the samples as
    /// (name with labels, value).
    pub(crate) fn parse_exposition(text: &str) -> Vec<(String, f64)> {
        assert!(text.ends_with('\n'), "exposition must end with a newline");
        let mut samples = Vec::new();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let kw = parts.next().unwrap();
                let name = parts.next().unwrap();
                assert!(["HELP", "TYPE"].contains(&kw), "{line}");
                assert!(is_metric_name(name), "{line}");
                if kw == "TYPE" {
                    let kind = parts.next().unwrap();
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    assert!(typed.insert(name.to_owned()), "two TYPE lines: {line}");
                }
                continue;
            }
            assert!(!line.is_empty(), "empty line");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
            };
            let name = match series.split_once('{') {
                None => series,
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap();
                    for pair in labels.split(',') {
                        let (k, v) = pair.split_once('=').unwrap();
                        assert!(is_metric_name(k), "{line}");
                        assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'));
                    }
                    name
                }
            };
            assert!(is_metric_name(name), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "sample before its TYPE: {line}");
            samples.push((series.to_owned(), value));
        }
        samples
    }

    fn is_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    pub(crate) fn value_of(samples: &[(String, f64)], series: &str) -> f64 {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no sample {series}"))
            .1
    }

    pub(crate) fn sample_metrics() -> EngineMetrics {
        let mut m = EngineMetrics {
            connections_per_shard: vec![3, 0],
            messages_in: 10,
            messages_stored: 9,
            deliveries: 20,
            redeliveries: 1,
            notices: 2,
            rate_limited: 4,
            queue_depth_per_shard: vec![0, 7],
            fanout_buckets: vec![(1, 2), (10, 5), (100, 9)],
            fanout_count: 9,
            fanout_sum: 123,
            events_dropped: 6,
            ..EngineMetrics::default()
        };
        m.storage.batches = 4;
        m.storage.batch_count = 4;
        m.storage.batch_size_sum = 9;
        m.storage.batch_size_buckets = vec![(1, 2), (8, 4)];
        m.storage.commit_latency_us_sum = 1500;
        m.storage.commit_latency_us_buckets = vec![(100, 1), (1000, 3), (u64::MAX, 4)];
        m
    }

    #[test]
    fn renders_every_family_parseably() {
        let gw = GatewayCounters::default();
        gw.count_status(200);
        gw.count_status(200);
        gw.count_status(404);
        gw.count_status(999);
        gw.count_status(0); // out of range: ignored, not a panic
        gw.webhook.delivered.store(5, Ordering::Relaxed);
        gw.webhook.queue_depth.store(2, Ordering::Relaxed);
        let text = render(&sample_metrics(), &gw);
        let s = parse_exposition(&text);
        for (series, v) in [
            ("tern_connections{shard=\"0\"}", 3.0),
            ("tern_connections{shard=\"1\"}", 0.0),
            ("tern_messages_in_total", 10.0),
            ("tern_messages_stored_total", 9.0),
            ("tern_deliveries_total", 20.0),
            ("tern_redeliveries_total", 1.0),
            ("tern_notices_total", 2.0),
            ("tern_rate_limited_total", 4.0),
            ("tern_events_dropped_total", 6.0),
            ("tern_queue_depth{shard=\"1\"}", 7.0),
            ("tern_fanout_size_bucket{le=\"10\"}", 5.0),
            ("tern_fanout_size_bucket{le=\"+Inf\"}", 9.0),
            ("tern_fanout_size_sum", 123.0),
            ("tern_fanout_size_count", 9.0),
            ("tern_storage_batch_size_bucket{le=\"8\"}", 4.0),
            ("tern_storage_batch_size_count", 4.0),
            ("tern_storage_commit_seconds_bucket{le=\"0.0001\"}", 1.0),
            ("tern_storage_commit_seconds_bucket{le=\"0.001\"}", 3.0),
            ("tern_storage_commit_seconds_bucket{le=\"+Inf\"}", 4.0),
            ("tern_storage_commit_seconds_sum", 0.0015),
            ("tern_webhook_queue_depth", 2.0),
            ("tern_webhook_delivered_total", 5.0),
            ("tern_webhook_dropped_total", 0.0),
            ("tern_webhook_failed_total", 0.0),
            ("tern_http_requests_total{code=\"200\"}", 2.0),
            ("tern_http_requests_total{code=\"404\"}", 1.0),
            ("tern_http_requests_total{code=\"999\"}", 1.0),
        ] {
            assert_eq!(value_of(&s, series), v, "{series}");
        }
        // u64::MAX is "no bound": only the +Inf bucket carries it.
        assert_eq!(
            text.matches("tern_storage_commit_seconds_bucket").count(),
            3
        );
        // Every family has HELP and TYPE.
        for family in [
            "tern_connections",
            "tern_fanout_size",
            "tern_storage_commit_seconds",
            "tern_http_requests_total",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
    }

    #[test]
    fn empty_metrics_still_parse() {
        let text = render(&EngineMetrics::default(), &GatewayCounters::default());
        let s = parse_exposition(&text);
        assert_eq!(value_of(&s, "tern_fanout_size_bucket{le=\"+Inf\"}"), 0.0);
        assert!(!text.contains("tern_connections{"));
    }

    #[test]
    fn inf_bucket_never_below_a_finite_one() {
        let m = EngineMetrics {
            fanout_buckets: vec![(1, 5)],
            fanout_count: 3, // raced: read before the bucket
            ..EngineMetrics::default()
        };
        let s = parse_exposition(&render(&m, &GatewayCounters::default()));
        assert_eq!(value_of(&s, "tern_fanout_size_bucket{le=\"+Inf\"}"), 5.0);
        assert_eq!(value_of(&s, "tern_fanout_size_count"), 5.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
    }
}
