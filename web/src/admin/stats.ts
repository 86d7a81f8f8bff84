// The shape of `GET /admin/stats` and what the dashboard derives from two
// consecutive answers.

export interface Histogram {
  /** Cumulative `[upper bound or null, count]`. */
  buckets: [number | null, number][];
  count: number;
  sum: number;
}

export interface Stats {
  ts: number;
  connections_per_shard: number[];
  messages_in: number;
  messages_stored: number;
  deliveries: number;
  redeliveries: number;
  notices: number;
  rate_limited: number;
  events_dropped: number;
  queue_depth_per_shard: number[];
  fanout: Histogram;
  storage: {
    batch_size: Histogram;
    commit_latency_us: Histogram;
    commit_latency_us_max: number;
    entries_written: number;
    errors: number;
    queue_depth: number;
  };
  webhook: { queue_depth: number; delivered: number; dropped: number; failed: number };
}

export interface Derived {
  connections: number;
  inPerS: number;
  storedPerS: number;
  deliveriesPerS: number;
  /** Mean recipients per entry stored in the interval (0 when none). */
  fanoutMean: number;
  /** Upper bound of the largest fan-out bucket that grew in the interval. */
  fanoutMax: number;
  /** Mean commit latency of the interval's batches, ms. */
  commitMeanMs: number;
  /** Mean requests per batch in the interval. */
  batchMean: number;
  webhookQueue: number;
  webhookPerS: number;
}

const perS = (a: number, b: number, dt: number) => Math.max(0, b - a) / dt;

/** Rates and means over the interval between `prev` and `cur` (`prev` null: totals only). */
export function derive(prev: Stats | null, cur: Stats): Derived {
  const connections = cur.connections_per_shard.reduce((a, b) => a + b, 0);
  const base = {
    connections,
    webhookQueue: cur.webhook.queue_depth,
    inPerS: 0,
    storedPerS: 0,
    deliveriesPerS: 0,
    fanoutMean: 0,
    fanoutMax: 0,
    commitMeanMs: 0,
    batchMean: 0,
    webhookPerS: 0,
  };
  if (!prev || cur.ts <= prev.ts) return base;
  const dt = (cur.ts - prev.ts) / 1000;
  const dFanCount = cur.fanout.count - prev.fanout.count;
  const dBatches = cur.storage.commit_latency_us.count - prev.storage.commit_latency_us.count;
  let fanoutMax = 0;
  cur.fanout.buckets.forEach(([le, n], i) => {
    const before = prev.fanout.buckets[i]?.[1] ?? 0;
    const below = i > 0 ? cur.fanout.buckets[i - 1][1] - (prev.fanout.buckets[i - 1]?.[1] ?? 0) : 0;
    if (n - before > below) fanoutMax = le ?? Infinity;
  });
  return {
    ...base,
    inPerS: perS(prev.messages_in, cur.messages_in, dt),
    storedPerS: perS(prev.messages_stored, cur.messages_stored, dt),
    deliveriesPerS: perS(prev.deliveries, cur.deliveries, dt),
    fanoutMean: dFanCount > 0 ? (cur.fanout.sum - prev.fanout.sum) / dFanCount : 0,
    fanoutMax: Number.isFinite(fanoutMax) ? fanoutMax : 0,
    commitMeanMs: dBatches > 0 ? (cur.storage.commit_latency_us.sum - prev.storage.commit_latency_us.sum) / dBatches / 1000 : 0,
    batchMean: dBatches > 0 ? (cur.storage.batch_size.sum - prev.storage.batch_size.sum) / dBatches : 0,
    webhookPerS: perS(prev.webhook.delivered, cur.webhook.delivered, dt),
  };
}
