// Interop: Tern against the npm `ws` client, which no one here wrote.
// Starts a real `tern serve` ($TERN_BIN) on free loopback ports with a temp
// data dir, creates users and tokens through the HTTP API, and checks both
// subprotocols, fragmentation, ping/pong, close codes and error paths
// against PROTOCOL.md. Run: TERN_BIN=path/to/tern node --test interop.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import WebSocket from 'ws';

const API_KEY = 'interop-key-node';
const JSON_SP = 'tern.v1.json';
const RKYV_SP = 'tern.v1.rkyv';
// Bound on every wait for a server answer: a test fails, it never hangs.
const REPLY_MS = 5000;
// The server's default max_frame_bytes (PROTOCOL.md: 64 KiB).
const FRAME_MAX = 64 * 1024;
// Bound for `tern serve` to answer /healthz after spawn.
const STARTUP_MS = 20000;

let server;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

before(async () => {
  const bin = process.env.TERN_BIN;
  assert.ok(bin, 'TERN_BIN is not set');
  const dir = mkdtempSync(join(tmpdir(), 'tern-interop-node-'));
  const wsPort = await freePort();
  const httpPort = await freePort();
  const log = join(dir, 'server.log');
  const fd = openSync(log, 'a');
  const proc = spawn(bin, [
    'serve', '--data-dir', join(dir, 'data'),
    '--ws-addr', `127.0.0.1:${wsPort}`, '--http-addr', `127.0.0.1:${httpPort}`,
    '--api-key', API_KEY, '--shards', '2', '--no-pin', '--durability', 'os',
  ], { stdio: ['ignore', fd, fd] });
  server = { dir, wsPort, httpPort, proc, log, exited: false };
  proc.on('exit', () => { server.exited = true; });
  const deadline = Date.now() + STARTUP_MS;
  while (Date.now() < deadline) {
    assert.ok(!server.exited, `tern serve exited early:\n${readFileSync(log, 'utf8')}`);
    try {
      const r = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
      if (r.status === 200) return;
    } catch { /* not up yet */ }
    await sleep(50);
  }
  assert.fail(`tern serve not healthy:\n${readFileSync(log, 'utf8')}`);
});

after(async () => {
  if (!server) return;
  if (!server.exited) {
    server.proc.kill('SIGTERM');
    const t0 = Date.now();
    while (!server.exited && Date.now() - t0 < 10000) await sleep(50);
    if (!server.exited) server.proc.kill('SIGKILL');
  }
  if (process.exitCode) console.log(readFileSync(server.log, 'utf8').slice(-8000));
  rmSync(server.dir, { recursive: true, force: true });
});

async function api(method, path, body) {
  const r = await fetch(`http://127.0.0.1:${server.httpPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function userToken(user, device) {
  let r = await api('PUT', `/v1/users/${user}`, {});
  assert.equal(r.status, 200, JSON.stringify(r.body));
  r = await api('POST', `/v1/users/${user}/tokens`, device ? { device } : {});
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.token;
}

/** A ws client with a queue of received messages and the close it got. */
class Client {
  constructor(protocols, path = '/ws') {
    const url = `ws://127.0.0.1:${server.wsPort}${path}`;
    this.ws = protocols === undefined
      ? new WebSocket(url, { perMessageDeflate: false, maxPayload: 16 << 20 })
      : new WebSocket(url, protocols, { perMessageDeflate: false, maxPayload: 16 << 20 });
    this.queue = [];
    this.waiters = [];
    this.pongs = [];
    this.ws.on('message', (data, isBinary) => {
      this.queue.push({ data, isBinary });
      this.wake();
    });
    this.ws.on('pong', (data) => { this.pongs.push(data); this.wake(); });
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => { this.closeCode = code; this.wake(); resolve({ code, reason: reason.toString() }); });
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    this.ws.on('error', () => { /* surfaced through opened/closed */ });
  }

  wake() { for (const w of this.waiters.splice(0)) w(); }

  async open() { await withTimeout(this.opened, REPLY_MS, 'open'); return this; }

  sendJson(v) { this.ws.send(JSON.stringify(v)); }

  /** The next received message (raw), waiting at most REPLY_MS. */
  async nextRaw() {
    const deadline = Date.now() + REPLY_MS;
    while (this.queue.length === 0) {
      if (this.closeCode !== undefined) throw new Error(`closed with ${this.closeCode}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no message in time');
      await withTimeout(new Promise((r) => this.waiters.push(r)), left, 'message').catch(() => {});
    }
    return this.queue.shift();
  }

  /** The next frame of type `ty` (others are skipped). */
  async expect(ty) {
    for (;;) {
      const { data, isBinary } = await this.nextRaw();
      assert.equal(isBinary, false, 'tern.v1.json frames are text frames');
      const v = JSON.parse(data.toString());
      if (v.type === ty) return v;
    }
  }

  async closeCodeSoon() {
    const c = await withTimeout(this.closed, REPLY_MS, 'close');
    return c.code;
  }

  async login(token, device) {
    this.sendJson({ type: 'auth', token, device });
    const ok = await this.expect('auth_ok');
    assert.equal(ok.device, device);
    return ok;
  }
}

async function connect(protocols = [JSON_SP]) {
  return new Client(protocols).open();
}

test('json: dm send, send_ack, msg, ack, dedup', async () => {
  const ta = await userToken('nd_a1');
  const tb = await userToken('nd_b1');
  const a = await connect();
  const b = await connect();
  assert.equal(a.ws.protocol, JSON_SP);
  const ok = await a.login(ta, 'phone');
  assert.equal(ok.user, 'nd_a1');
  assert.ok(ok.heartbeat_ms > 0 && ok.ack_timeout_ms > 0);
  await b.login(tb, 'laptop');
  const send = { type: 'send', cmid: 'm1', to: 'user:nd_b1', kind: 'text', body: 'hi from node ✓' };
  a.sendJson(send);
  const ack = await a.expect('send_ack');
  assert.equal(ack.conv, 'dm:nd_a1:nd_b1');
  assert.equal(ack.seq, 1);
  const msg = await b.expect('msg');
  assert.equal(msg.body, 'hi from node ✓');
  assert.equal(msg.from, 'nd_a1');
  assert.equal(msg.device, 'phone');
  b.sendJson({ type: 'ack', conv: msg.conv, seq: msg.seq });
  a.sendJson(send);
  const again = await a.expect('send_ack');
  assert.deepEqual([again.seq, again.ts], [ack.seq, ack.ts]);
  a.ws.close(1000);
  b.ws.close(1000);
  await Promise.all([a.closed, b.closed]);
});

test('fragmented client message (continuation frames)', async () => {
  const ta = await userToken('nd_a2');
  const tb = await userToken('nd_b2');
  const a = await connect();
  const b = await connect();
  await a.login(ta, 'd');
  await b.login(tb, 'd');
  const frame = JSON.stringify({ type: 'send', cmid: 'frag', to: 'user:nd_b2', kind: 'text', body: 'z'.repeat(5000) });
  const n = 4;
  const size = Math.ceil(frame.length / n);
  for (let i = 0; i < n; i++) {
    a.ws.send(frame.slice(i * size, (i + 1) * size), { fin: i === n - 1 });
  }
  const ack = await a.expect('send_ack');
  assert.equal(ack.cmid, 'frag');
  const msg = await b.expect('msg');
  assert.equal(msg.body.length, 5000);
  a.ws.close(1000);
  b.ws.close(1000);
});

test('websocket ping gets pong; app ping gets pong frame', async () => {
  const t = await userToken('nd_p');
  const c = await connect();
  await c.login(t, 'd');
  c.ws.ping(Buffer.from('node-ping'));
  const deadline = Date.now() + REPLY_MS;
  while (c.pongs.length === 0 && Date.now() < deadline) await sleep(10);
  assert.equal(c.pongs.length, 1, 'no pong');
  assert.equal(c.pongs[0].toString(), 'node-ping');
  c.sendJson({ type: 'ping' });
  const pong = await c.expect('pong');
  assert.equal(typeof pong.ts, 'number');
  c.ws.close(1000);
});

test('client close 1000 is echoed', async () => {
  const t = await userToken('nd_c');
  const c = await connect();
  await c.login(t, 'd');
  c.ws.close(1000, 'bye');
  assert.equal(await c.closeCodeSoon(), 1000);
});

test('oversized message closes 1009 (whole and fragmented)', async () => {
  const t = await userToken('nd_o');
  let c = await connect();
  await c.login(t, 'd1');
  c.ws.send('x'.repeat(FRAME_MAX + 100));
  assert.equal(await c.closeCodeSoon(), 1009);
  c = await connect();
  await c.login(t, 'd2');
  for (let i = 0; i < 5; i++) c.ws.send('y'.repeat(16384), { fin: i === 4 });
  assert.equal(await c.closeCodeSoon(), 1009);
});

test('invalid UTF-8 in a text frame closes 1007', async () => {
  const t = await userToken('nd_u');
  const c = await connect();
  await c.login(t, 'd');
  c.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
  assert.equal(await c.closeCodeSoon(), 1007);
});

test('bad frames get error bad_request and the connection stays open', async () => {
  const t = await userToken('nd_bad');
  const c = await connect();
  await c.login(t, 'd');
  for (const bad of ['nope', '{"type":"what"}', '{"type":"sync"}', '"str"']) {
    c.ws.send(bad);
    const e = await c.expect('error');
    assert.equal(e.code, 'bad_request', bad);
  }
  c.sendJson({ type: 'send', cmid: 'g', to: 'group:nd_no_group', kind: 'text', body: 'x' });
  const err = await c.expect('send_err');
  assert.equal(err.code, 'no_such_group');
  c.sendJson({ type: 'ping' });
  await c.expect('pong');
  c.ws.close(1000);
});

test('auth errors: error unauthorized and close 4401', async () => {
  const t = await userToken('nd_auth', 'phone');
  let c = await connect();
  c.sendJson({ type: 'auth', token: 'forged', device: 'phone' });
  let e = await c.expect('error');
  assert.equal(e.code, 'unauthorized');
  assert.equal(await c.closeCodeSoon(), 4401);
  c = await connect();
  c.sendJson({ type: 'auth', token: t, device: 'tablet' });
  e = await c.expect('error');
  assert.equal(e.code, 'unauthorized');
  assert.equal(await c.closeCodeSoon(), 4401);
  c = await connect();
  c.sendJson({ type: 'convs' });
  e = await c.expect('error');
  assert.equal(e.code, 'unauthorized');
  assert.equal(await c.closeCodeSoon(), 4401);
});

test('no subprotocol offered: JSON, no Sec-WebSocket-Protocol answer', async () => {
  const t = await userToken('nd_ns');
  const c = await new Client(undefined).open();
  assert.equal(c.ws.protocol, '');
  await c.login(t, 'd');
  c.ws.close(1000);
});

test('only unknown subprotocols offered: the server selects none', async () => {
  // RFC 6455 lets the server answer without a subprotocol; `ws` then fails
  // the handshake on its side, which shows the answer carried none.
  const c = new Client(['chat.v9']);
  await assert.rejects(c.open(), /no subprotocol/i);
});

test('first known subprotocol in the offer wins', async () => {
  const c = await connect(['x.unknown', RKYV_SP, JSON_SP]);
  assert.equal(c.ws.protocol, RKYV_SP);
  c.ws.close(1000);
});

test('upgrade on a wrong path is refused with 404', async () => {
  const c = new Client([JSON_SP], '/elsewhere');
  await assert.rejects(c.open(), /HTTP 404/);
});

test('rkyv: malformed archives get binary error frames; 1009; 1007; close 1000', async () => {
  let c = await connect([RKYV_SP]);
  assert.equal(c.ws.protocol, RKYV_SP);
  for (const junk of [Buffer.from([1, 2, 3]), Buffer.alloc(100, 0xee)]) {
    c.ws.send(junk);
    const { data, isBinary } = await c.nextRaw();
    assert.equal(isBinary, true, 'rkyv answers are binary frames');
    assert.ok(data.length > 0);
  }
  c.ws.ping();
  const deadline = Date.now() + REPLY_MS;
  while (c.pongs.length === 0 && Date.now() < deadline) await sleep(10);
  assert.equal(c.pongs.length, 1);
  c.ws.close(1000);
  assert.equal(await c.closeCodeSoon(), 1000);

  c = await connect([RKYV_SP]);
  c.ws.send(Buffer.alloc(FRAME_MAX + 1));
  assert.equal(await c.closeCodeSoon(), 1009);

  c = await connect([RKYV_SP]);
  c.ws.send(Buffer.from([0xc3, 0x28]), { binary: false });
  assert.equal(await c.closeCodeSoon(), 1007);
});
