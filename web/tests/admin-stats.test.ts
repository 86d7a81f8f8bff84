import { describe, expect, it } from 'vitest';
import { derive, type Stats } from '../src/admin/stats';

function stats(over: Partial<Stats> & { ts: number }): Stats {
  const h = { buckets: [] as [number | null, number][], count: 0, sum: 0 };
  return {
    connections_per_shard: [0, 0],
    messages_in: 0,
    messages_stored: 0,
    deliveries: 0,
    redeliveries: 0,
    notices: 0,
    rate_limited: 0,
    events_dropped: 0,
    queue_depth_per_shard: [0, 0],
    fanout: h,
    storage: { batch_size: h, commit_latency_us: h, commit_latency_us_max: 0, entries_written: 0, errors: 0, queue_depth: 0 },
    webhook: { queue_depth: 0, delivered: 0, dropped: 0, failed: 0 },
    ...over,
  };
}

describe('dashboard derivations', () => {
  it('sums connections and reports no rates for the first sample', () => {
    const d = derive(null, stats({ ts: 1000, connections_per_shard: [2, 3], messages_in: 50 }));
    expect(d.connections).toBe(5);
    expect(d.inPerS).toBe(0);
  });

  it('turns counter differences into per-second rates and interval means', () => {
    const a = stats({
      ts: 1000,
      messages_in: 10,
      deliveries: 20,
      fanout: { buckets: [[1, 4], [10, 4], [null, 4]], count: 4, sum: 4 },
      storage: {
        batch_size: { buckets: [], count: 2, sum: 4 },
        commit_latency_us: { buckets: [], count: 2, sum: 2000 },
        commit_latency_us_max: 1500,
        entries_written: 0,
        errors: 0,
        queue_depth: 0,
      },
    });
    const b = stats({
      ts: 3000,
      messages_in: 30,
      deliveries: 80,
      fanout: { buckets: [[1, 5], [10, 7], [null, 7]], count: 7, sum: 25 },
      storage: {
        batch_size: { buckets: [], count: 6, sum: 24 },
        commit_latency_us: { buckets: [], count: 6, sum: 14000 },
        commit_latency_us_max: 5000,
        entries_written: 0,
        errors: 0,
        queue_depth: 0,
      },
      webhook: { queue_depth: 3, delivered: 10, dropped: 0, failed: 0 },
    });
    const d = derive(a, b);
    expect(d.inPerS).toBe(10);
    expect(d.deliveriesPerS).toBe(30);
    expect(d.fanoutMean).toBe(7);
    expect(d.fanoutMax).toBe(10);
    expect(d.commitMeanMs).toBe(3);
    expect(d.batchMean).toBe(5);
    expect(d.webhookQueue).toBe(3);
    expect(d.webhookPerS).toBe(5);
  });

  it('never reports negative rates (a restarted server resets counters)', () => {
    const d = derive(stats({ ts: 1000, messages_in: 100 }), stats({ ts: 2000, messages_in: 3 }));
    expect(d.inPerS).toBe(0);
  });
});
