import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SendError, TernClient, type DeliveredEntry, type StateInfo } from '../src/lib';
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

  it('close rejects what is still waiting', async () => {
    const s = setup();
    const p = s.client.send('user:bob', 'text', 'x');
    s.client.close();
    await expect(p).rejects.toMatchObject({ code: 'closed' });
  });
});
