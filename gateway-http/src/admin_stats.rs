//! `GET /admin/stats`: the counters of `/metrics` as one JSON object, for
//! the operations dashboard (`/admin/`), which polls it every second and
//! plots the differences. Behind the API key (`auth.rs` guards this path
//! like `/v1`): unlike the Prometheus page it is meant for a browser, and a
//! browser page is easier to leave open somewhere than a scraper. Not under
//! `/v1` and not in `/openapi.json`: `/v1` is the contract's business API,
//! this is an operator's view of one server.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use tern_engine::EngineMetrics;

use crate::engine::Engine;
use crate::metrics::GatewayCounters;
use crate::routes::Shared;

/// A histogram: cumulative `[le, count]` buckets (`le` null: no bound),
/// total count and sum.
#[derive(Serialize, Debug)]
pub(crate) struct HistogramDto {
    /// `[upper bound or null, observations at or below it]`, ascending.
    buckets: Vec<(Option<u64>, u64)>,
    count: u64,
    sum: u64,
}

impl HistogramDto {
    fn new(buckets: &[(u64, u64)], count: u64, sum: u64) -> Self {
        Self {
            buckets: buckets
                .iter()
                .map(|&(le, n)| ((le != u64::MAX).then_some(le), n))
                .collect(),
            count,
            sum,
        }
    }
}

/// Storage writer counters.
#[derive(Serialize, Debug)]
pub(crate) struct StorageDto {
    /// Requests per write batch.
    batch_size: HistogramDto,
    /// Commit time of one batch, µs.
    commit_latency_us: HistogramDto,
    /// Longest commit so far, µs.
    commit_latency_us_max: u64,
    entries_written: u64,
    errors: u64,
    /// Requests waiting for the writer now.
    queue_depth: u64,
}

/// Webhook dispatcher counters (events).
#[derive(Serialize, Debug)]
pub(crate) struct WebhookDto {
    /// Events waiting in the gateway's queue now.
    queue_depth: u64,
    delivered: u64,
    dropped: u64,
    failed: u64,
}

/// Answer of `GET /admin/stats`: counters are totals since start; the client
/// divides differences by the time between two answers (`ts`).
#[derive(Serialize, Debug)]
pub(crate) struct StatsDto {
    /// Server time of the snapshot, ms since the Unix epoch.
    ts: u64,
    /// Open WebSocket connections, one entry per shard.
    connections_per_shard: Vec<i64>,
    /// Sends received (WebSocket and HTTP).
    messages_in: u64,
    /// Messages durably stored.
    messages_stored: u64,
    /// Entries pushed to devices (first pushes).
    deliveries: u64,
    redeliveries: u64,
    notices: u64,
    rate_limited: u64,
    events_dropped: u64,
    /// Batches waiting in each shard's mesh inbox.
    queue_depth_per_shard: Vec<u64>,
    /// Recipients per stored entry.
    fanout: HistogramDto,
    storage: StorageDto,
    webhook: WebhookDto,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn snapshot(e: EngineMetrics, gw: &GatewayCounters) -> StatsDto {
    let s = &e.storage;
    let w = &gw.webhook;
    StatsDto {
        ts: now_ms(),
        fanout: HistogramDto::new(&e.fanout_buckets, e.fanout_count, e.fanout_sum),
        storage: StorageDto {
            batch_size: HistogramDto::new(&s.batch_size_buckets, s.batch_count, s.batch_size_sum),
            commit_latency_us: HistogramDto::new(
                &s.commit_latency_us_buckets,
                s.batch_count,
                s.commit_latency_us_sum,
            ),
            commit_latency_us_max: s.commit_latency_us_max,
            entries_written: s.entries_written,
            errors: s.errors,
            queue_depth: s.queue_depth,
        },
        webhook: WebhookDto {
            queue_depth: w.queue_depth.load(Ordering::Relaxed),
            delivered: w.delivered.load(Ordering::Relaxed),
            dropped: w.dropped.load(Ordering::Relaxed),
            failed: w.failed.load(Ordering::Relaxed),
        },
        connections_per_shard: e.connections_per_shard,
        messages_in: e.messages_in,
        messages_stored: e.messages_stored,
        deliveries: e.deliveries,
        redeliveries: e.redeliveries,
        notices: e.notices,
        rate_limited: e.rate_limited,
        events_dropped: e.events_dropped,
        queue_depth_per_shard: e.queue_depth_per_shard,
    }
}

/// Path of the stats route.
pub(crate) const PATH: &str = "/admin/stats";

/// `GET /admin/stats`: the engine's and the gateway's counters as JSON.
pub(crate) async fn stats<E: Engine>(State(st): State<Shared<E>>) -> Json<StatsDto> {
    Json(snapshot(st.engine.metrics(), &st.counters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_carries_every_counter() {
        let gw = GatewayCounters::default();
        gw.webhook.delivered.store(5, Ordering::Relaxed);
        let m = crate::metrics::tests::sample_metrics();
        let v = serde_json::to_value(snapshot(m, &gw)).unwrap();
        assert_eq!(v["connections_per_shard"], serde_json::json!([3, 0]));
        assert_eq!(v["messages_in"], 10);
        assert_eq!(v["deliveries"], 20);
        assert_eq!(v["fanout"]["count"], 9);
        assert_eq!(v["fanout"]["sum"], 123);
        assert_eq!(v["storage"]["batch_size"]["count"], 4);
        assert_eq!(v["storage"]["commit_latency_us"]["sum"], 1500);
        // u64::MAX is "no bound", written as null.
        assert_eq!(
            v["storage"]["commit_latency_us"]["buckets"][2],
            serde_json::json!([null, 4])
        );
        assert_eq!(v["webhook"]["delivered"], 5);
        assert!(v["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
}
