import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  restoredSends,
  SendError,
  TernClient,
  webStorageOutbox,
  type DeliveredEntry,
  type OutboxStore,
  type PendingSend,
  type StateInfo,
} from '../src/lib';
import { fakeFactory, msg } from './fake';

const fixed = () => 0.5;

function setup(extra: Partial<ConstructorParameters<typeof TernClient>[0]> = {}) {
  const f = fakeFactory();
  const client = new TernClient({
    url: 'ws://h/ws',
    device: 'd1',
    token: 'tok',
    connect: f.connect,
    random: fixed,
    backoff: { initialMs: 100, maxMs: 1000, factor: 2 },
    ...extra,
  });
  const entries: DeliveredEntry[] = [];
  const states: StateInfo[] = [];
  client.on('entry', (e) => entries.push(e));
  client.on('state', (s) => states.push(s));
  return { f, client, entries, states };
}

/** Start, open the socket, answer auth_ok; flushes the token promise. */
async function online(s: ReturnType<typeof setup>) {
  s.client.start();
  await vi.advanceTimersByTimeAsync(0);
  s.f.last().open();
  s.f.last().authOk();
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('TernClient session', () => {
  it('authenticates with the token and device, then asks for convs', async () => {
    const s = setup();
    await online(s);
    const ws = s.f.last();
    expect(ws.protocols).toEqual(['tern.v1.json']);
    expect(ws.sent[0]).toEqual({ type: 'auth', token: 'tok', device: 'd1' });
    expect(ws.of('convs')).toHaveLength(1);
    expect(s.client.state.state).toBe('online');
    s.client.close();
  });

  it('pings to keep alive', async () => {
    const s = setup();
    await online(s);
    await vi.advanceTimersByTimeAsync(15_000);
    expect(s.f.last().of('ping').length).toBeGreaterThanOrEqual(1);
    s.client.close();
  });

  it('drops and retries a connection that never authenticates', async () => {
    const s = setup();
    s.client.start();
    await vi.advanceTimersByTimeAsync(0);
    s.f.last().open();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(s.f.last().closedByClient).toBe(true);
    expect(s.client.state).toMatchObject({ state: 'offline', reason: 'no answer to auth' });
    await vi.advanceTimersByTimeAsync(1000);
    expect(s.f.sockets).toHaveLength(2);
    s.client.close();
  });

  it('asks the token function before every attempt', async () => {
    let n = 0;
    const s = setup({ token: async () => `t${++n}` });
    await online(s);
    s.f.last().drop(4401);
    await vi.advanceTimersByTimeAsync(1000);
    s.f.last().open();
    expect(s.f.last().sent[0]).toMatchObject({ type: 'auth', token: 't2' });
    s.client.close();
  });
});

describe('delivery', () => {
  it('drops duplicates by (conv, seq) and acks cumulatively within a second', async () => {
    const s = setup();
    await online(s);
    const ws = s.f.last();
    ws.push(msg('dm:alice:bob', 1));
    ws.push(msg('dm:alice:bob', 2));
    ws.push(msg('dm:alice:bob', 2));
    expect(s.entries.map((e) => e.entry.seq)).toEqual([1, 2]);
    expect(ws.of('ack')).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1000);
    expect(ws.of('ack')).toEqual([{ type: 'ack', conv: 'dm:alice:bob', seq: 2 }]);
    s.client.close();
  });

  it('acks at once after 64 entries', async () => {
    const s = setup();
    await online(s);
    const ws = s.f.last();
    for (let i = 1; i <= 64; i++) ws.push(msg('c', i));
    expect(ws.of('ack')).toEqual([{ type: 'ack', conv: 'c', seq: 64 }]);
    s.client.close();
  });

  it('syncs a gap seen in live pushes', async () => {
    const s = setup();
    await online(s);
    const ws = s.f.last();
    ws.push(msg('c', 1));
    ws.push(msg('c', 4));
    expect(ws.of('sync')).toEqual([{ type: 'sync', conv: 'c', after: 1, limit: 100 }]);
    ws.push({ type: 'sync_result', conv: 'c', messages: [msg('c', 2), msg('c', 3), msg('c', 4)], has_more: false });
    expect(s.entries.map((e) => e.entry.seq)).toEqual([1, 4, 2, 3]);
    expect(s.client.seqs.contiguous('c')).toBe(4);
    s.client.close();
  });

  it('fetches only the latest history of a conversation it never saw', async () => {
    const s = setup({ initialHistory: 10 });
    await online(s);
    const ws = s.f.last();
    ws.push({ type: 'convs_result', convs: [{ conv: 'g', max_seq: 500, read_seq: 0, unread: 500 }] });
    expect(ws.of('sync')).toEqual([{ type: 'sync', conv: 'g', after: 490, limit: 100 }]);
    s.client.close();
  });
});

describe('reconnect', () => {
  it('backs off, reconnects, and syncs every gap reported by convs', async () => {
    const s = setup();
    await online(s);
    s.f.last().push(msg('c', 1));
    s.f.last().drop(1006);
    expect(s.client.state.state).toBe('offline');
    expect(s.client.state.retryInMs).toBe(75); // half of 100 plus half of the jitter range
    await vi.advanceTimersByTimeAsync(75);
    expect(s.f.sockets).toHaveLength(2);
    const ws = s.f.last();
    ws.open();
    ws.authOk();
    expect(ws.of('convs')).toHaveLength(1);
    ws.push({
      type: 'convs_result',
      convs: [
        { conv: 'c', max_seq: 3, read_seq: 0, unread: 3 },
        { conv: 'd', max_seq: 1, read_seq: 0, unread: 1 },
      ],
    });
    expect(ws.of('sync')).toEqual([
      { type: 'sync', conv: 'c', after: 1, limit: 100 },
      { type: 'sync', conv: 'd', after: 0, limit: 100 },
    ]);
    ws.push({ type: 'sync_result', conv: 'c', messages: [msg('c', 1), msg('c', 2)], has_more: true });
    expect(ws.of('sync')).toHaveLength(3);
    expect(ws.of('sync')[2]).toEqual({ type: 'sync', conv: 'c', after: 2, limit: 100 });
    ws.push({ type: 'sync_result', conv: 'c', messages: [msg('c', 3)], has_more: false });
    expect(s.entries.filter((e) => e.entry.conv === 'c').map((e) => e.entry.seq)).toEqual([1, 2, 3]);
    s.client.close();
  });

  it('grows the delay while the server stays away and resets it after auth_ok', async () => {
    const s = setup();
    s.client.start();
    await vi.advanceTimersByTimeAsync(0);
    s.f.last().drop(1006);
    const d1 = s.client.state.retryInMs ?? 0;
    await vi.advanceTimersByTimeAsync(d1);
    s.f.last().drop(1006);
    const d2 = s.client.state.retryInMs ?? 0;
    expect(d2).toBeGreaterThan(d1);
    await vi.advanceTimersByTimeAsync(d2);
    s.f.last().open();
    s.f.last().authOk();
    s.f.last().drop(1006);
    expect(s.client.state.retryInMs).toBe(d1);
    s.client.close();
  });

  it('stays down after a kick', async () => {
    const s = setup();
    await online(s);
    s.f.last().push({ type: 'kicked', reason: 'replaced' });
    s.f.last().drop(4409);
    expect(s.client.state).toMatchObject({ state: 'stopped', reason: 'replaced' });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(s.f.sockets).toHaveLength(1);
  });

  it('pause closes and stays offline; resume reconnects', async () => {
    const s = setup();
    await online(s);
    s.client.pause();
    expect(s.f.last().closedByClient).toBe(true);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(s.f.sockets).toHaveLength(1);
    s.client.resume();
    await vi.advanceTimersByTimeAsync(0);
    expect(s.f.sockets).toHaveLength(2);
    s.client.close();
  });
});

describe('sending', () => {
  it('queues while offline and resends with the same cmid until acked, once', async () => {
    const s = setup();
    const p = s.client.send('user:bob', 'text', 'hi', 'cm1');
    expect(s.client.pending.map((x) => x.cmid)).toEqual(['cm1']);
    await online(s);
    expect(s.f.last().of('send')).toEqual([{ type: 'send', cmid: 'cm1', to: 'user:bob', kind: 'text', body: 'hi' }]);
    // Lost before the answer: the next connection sends it again, same cmid.
    s.f.last().drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    s.f.last().open();
    s.f.last().authOk();
    expect(s.f.last().of('send').map((x) => x.cmid)).toEqual(['cm1']);
    s.f.last().push({ type: 'send_ack', cmid: 'cm1', conv: 'dm:alice:bob', seq: 7, ts: 9 });
    s.f.last().push({ type: 'send_ack', cmid: 'cm1', conv: 'dm:alice:bob', seq: 7, ts: 9 });
    await expect(p).resolves.toMatchObject({ seq: 7 });
    expect(s.entries).toHaveLength(1);
    expect(s.entries[0]).toMatchObject({ own: true, entry: { conv: 'dm:alice:bob', seq: 7, from: 'alice', body: 'hi' } });
    expect(s.client.pending).toEqual([]);
    // The same message coming back by sync is not delivered twice.
    s.f.last().push({ type: 'sync_result', conv: 'dm:alice:bob', messages: [msg('dm:alice:bob', 7, 'alice')], has_more: false });
    expect(s.entries).toHaveLength(1);
    s.client.close();
  });

  it('repeats a send without an answer after the timeout', async () => {
    const s = setup({ sendTimeoutMs: 3000 });
    await online(s);
    s.client.send('user:bob', 'text', 'x', 'cm2').catch(() => {});
    expect(s.f.last().of('send')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(4000);
    expect(s.f.last().of('send').map((x) => x.cmid)).toEqual(['cm2', 'cm2']);
    s.client.close();
  });

  it('rejects on a permanent send_err, keeps a retryable one', async () => {
    const s = setup({ sendTimeoutMs: 2000 });
    await online(s);
    const bad = s.client.send('user:nobody', 'text', 'x', 'cm3');
    s.client.send('user:bob', 'text', 'y', 'cm4').catch(() => {});
    s.f.last().push({ type: 'send_err', cmid: 'cm3', code: 'no_such_user', message: 'no such user' });
    s.f.last().push({ type: 'send_err', cmid: 'cm4', code: 'rate_limited', message: 'slow down' });
    await expect(bad).rejects.toBeInstanceOf(SendError);
    await expect(bad).rejects.toMatchObject({ code: 'no_such_user' });
    expect(s.client.pending.map((x) => x.cmid)).toEqual(['cm4']);
    await vi.advanceTimersByTimeAsync(3000);
    expect(s.f.last().of('send').filter((x) => x.cmid === 'cm4')).toHaveLength(2);
    s.client.close();
  });

  it('with a store, what waited is sent again after a reload, once, and the store empties', async () => {
    let saved: unknown = null;
    const store: OutboxStore = { load: () => saved, save: (items) => (saved = structuredClone(items)) };
    // Written while offline; the page is then closed (no close(): a reload).
    const before = setup({ outboxStore: store });
    before.client.send('user:bob', 'text', 'written offline', 'cm-a').catch(() => {});
    before.client.send('user:bob', 'custom', { n: 1 }, 'cm-b').catch(() => {});
    expect((saved as PendingSend[]).map((x) => x.cmid)).toEqual(['cm-a', 'cm-b']);

    const after = setup({ outboxStore: store });
    const shown: PendingSend[][] = [];
    const failed: SendError[] = [];
    after.client.on('outbox', (items) => shown.push(items));
    after.client.on('sendFailed', (e) => failed.push(e));
    expect(after.client.pending.map((x) => x.cmid)).toEqual(['cm-a', 'cm-b']);
    await online(after);
    // Shown at start, while still offline, and sent with the same cmids.
    expect(shown[0].map((x) => x.cmid)).toEqual(['cm-a', 'cm-b']);
    expect(after.f.last().of('send')).toEqual([
      { type: 'send', cmid: 'cm-a', to: 'user:bob', kind: 'text', body: 'written offline' },
      { type: 'send', cmid: 'cm-b', to: 'user:bob', kind: 'custom', body: { n: 1 } },
    ]);
    after.f.last().push({ type: 'send_ack', cmid: 'cm-a', conv: 'dm:alice:bob', seq: 3, ts: 9 });
    expect(after.entries).toHaveLength(1);
    expect(after.entries[0]).toMatchObject({ own: true, entry: { seq: 3, body: 'written offline' } });
    expect((saved as PendingSend[]).map((x) => x.cmid)).toEqual(['cm-b']);
    // A permanent refusal of a restored send has no promise: it is an event.
    after.f.last().push({ type: 'send_err', cmid: 'cm-b', code: 'too_large', message: 'too large' });
    expect(failed.map((e) => [e.cmid, e.code])).toEqual([['cm-b', 'too_large']]);
    expect(saved).toEqual([]);
    after.client.close();
  });

  it('close empties the store; a broken store leaves the outbox working in memory', async () => {
    let saved: unknown = null;
    const store: OutboxStore = { load: () => saved, save: (items) => (saved = items) };
    const a = setup({ outboxStore: store });
    a.client.send('user:bob', 'text', 'x', 'cm-c').catch(() => {});
    expect(saved).toHaveLength(1);
    a.client.close();
    expect(saved).toEqual([]);

    const broken: OutboxStore = {
      load: () => {
        throw new Error('no storage');
      },
      save: () => {
        throw new Error('quota');
      },
    };
    const b = setup({ outboxStore: broken });
    expect(b.client.pending).toEqual([]);
    const p = b.client.send('user:bob', 'text', 'y', 'cm-d');
    await online(b);
    b.f.last().push({ type: 'send_ack', cmid: 'cm-d', conv: 'dm:alice:bob', seq: 1, ts: 1 });
    await expect(p).resolves.toMatchObject({ seq: 1 });
    b.client.close();
  });

  it('restores only well-formed sends, each cmid once, at most outboxMax', () => {
    const good = { cmid: 'c1', to: 'user:bob', kind: 'text', body: 'a', attempts: 2, createdAt: 5 };
    const stored = [
      good,
      { ...good }, // the same cmid again
      { ...good, cmid: '' },
      { ...good, cmid: 'x'.repeat(65) },
      { ...good, cmid: 'c2', kind: 'sticker' },
      { ...good, cmid: 'c3', to: 7 },
      { cmid: 'c4', to: 'user:bob', kind: 'text', createdAt: 1 }, // no body
      { ...good, cmid: 'c5', createdAt: 'yesterday' },
      { ...good, cmid: 'c6', attempts: 'many' },
      null,
      'c7',
      { ...good, cmid: 'c8' },
    ];
    expect(restoredSends(stored, 100).map((p) => [p.cmid, p.attempts])).toEqual([
      ['c1', 2],
      ['c6', 0],
      ['c8', 2],
    ]);
    expect(restoredSends(stored, 2).map((p) => p.cmid)).toEqual(['c1', 'c6']);
    expect(restoredSends({ not: 'a list' }, 100)).toEqual([]);
    expect(restoredSends(null, 100)).toEqual([]);
  });

  it('webStorageOutbox keeps the list under its key and forgets an empty one', () => {
    const m = new Map<string, string>();
    const storage = {
      getItem: (k: string) => m.get(k) ?? null,
      setItem: (k: string, v: string) => void m.set(k, v),
      removeItem: (k: string) => void m.delete(k),
    } as unknown as Storage;
    const st = webStorageOutbox(storage, 'tern.outbox.alice.d1');
    expect(st.load()).toBeNull();
    const item: PendingSend = { cmid: 'c1', to: 'user:bob', kind: 'text', body: 'hi', attempts: 0, createdAt: 1 };
    st.save([item]);
    expect(st.load()).toEqual([item]);
    st.save([]);
    expect(m.has('tern.outbox.alice.d1')).toBe(false);
    m.set('tern.outbox.alice.d1', '{not json');
    expect(st.load()).toBeNull();
  });

  it('close rejects what is still waiting', async () => {
    const s = setup();
    const p = s.client.send('user:bob', 'text', 'x');
    s.client.close();
    await expect(p).rejects.toMatchObject({ code: 'closed' });
  });
});
