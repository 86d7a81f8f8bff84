// TernClient: one device's connection to a Tern server over `tern.v1.json`.
//
// It does what PROTOCOL.md asks of a client, so the application does not:
// - auth within the deadline, keep-alive pings, a watchdog on silence;
// - reconnect with jittered exponential backoff, then `convs` and `sync`
//   of every gap ("no gap survives a reconnect");
// - dedup by (conv, seq): each entry reaches the application once;
// - cumulative `ack`s, at least every 64 entries or every second;
// - sends kept in an outbox until their `send_ack`, sent again with the
//   same cmid after a reconnect or a timeout (the server dedups by cmid,
//   so nothing is doubled); with an `outboxStore`, also after a reload.

import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff';
import { Emitter } from './emitter';
import {
  CLOSE,
  isKind,
  RETRYABLE_SEND_ERRORS,
  SUBPROTOCOL,
  SYNC_LIMIT_MAX,
  type AuthOk,
  type ConvInfo,
  type Entry,
  type ErrorFrame,
  type Kind,
  type MsgEntry,
  type Receipt,
  type SendAck,
  type ServerFrame,
  type Typing,
} from './protocol';
import { SeqTracker } from './seqs';

/** The part of the browser `WebSocket` the client uses (a fake in tests). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketFactory = (url: string, protocols: string[]) => WebSocketLike;

/** Where the connection is. */
export type ConnState =
  | 'idle' // not started
  | 'connecting' // opening the socket, authenticating
  | 'online' // auth_ok received
  | 'offline' // lost; a retry is scheduled
  | 'paused' // closed on request; resume() reconnects
  | 'stopped'; // kicked, or closed for good

export interface StateInfo {
  state: ConnState;
  /** When `offline`: ms until the next attempt. */
  retryInMs?: number;
  /** Why the last connection ended (close code, kick reason, error). */
  reason?: string;
}

/** A send waiting for its `send_ack`. */
export interface PendingSend {
  cmid: string;
  to: string;
  kind: Kind;
  body: unknown;
  /** Times it went out on a socket. */
  attempts: number;
  createdAt: number;
}

export interface DeliveredEntry {
  entry: Entry;
  /** This device sent it (built from our `send_ack`). */
  own: boolean;
  /** Pushed live, not recovered by `sync`. */
  live: boolean;
}

export interface ClientEvents {
  state: StateInfo;
  authed: AuthOk;
  entry: DeliveredEntry;
  convs: ConvInfo[];
  receipt: Receipt;
  typing: Typing;
  outbox: PendingSend[];
  /** A send refused for good (also one restored from the store, which has no promise). */
  sendFailed: SendError;
  error: ErrorFrame;
}

/**
 * Where the outbox outlives the page: `save` gets every change, `load` is
 * asked once, when the client is made. A message written while offline is
 * then sent after a reload, with its cmid, so the server stores it once.
 */
export interface OutboxStore {
  /** What `save` was given last (any shape: it is checked), or nothing. */
  load(): unknown;
  save(items: PendingSend[]): void;
}

/** An [`OutboxStore`] in a Web Storage (`localStorage`, `sessionStorage`) under `key`. */
export function webStorageOutbox(storage: Storage, key: string): OutboxStore {
  return {
    load: () => {
      const raw = storage.getItem(key);
      if (raw === null) return null;
      try {
        return JSON.parse(raw) as unknown;
      } catch {
        return null;
      }
    },
    save: (items) => {
      if (items.length === 0) storage.removeItem(key);
      else storage.setItem(key, JSON.stringify(items));
    },
  };
}

/** The well-formed sends of what a store held, oldest first, at most `max`. */
export function restoredSends(stored: unknown, max: number): PendingSend[] {
  if (!Array.isArray(stored)) return [];
  const out: PendingSend[] = [];
  const seen = new Set<string>();
  for (const x of stored as unknown[]) {
    if (out.length >= max) break;
    if (typeof x !== 'object' || x === null) continue;
    const p = x as Record<string, unknown>;
    const ok =
      typeof p.cmid === 'string' &&
      p.cmid.length > 0 &&
      p.cmid.length <= 64 &&
      !seen.has(p.cmid) &&
      typeof p.to === 'string' &&
      isKind(p.kind) &&
      'body' in p &&
      typeof p.createdAt === 'number' &&
      Number.isFinite(p.createdAt);
    if (!ok) continue;
    seen.add(p.cmid as string);
    out.push({
      cmid: p.cmid as string,
      to: p.to as string,
      kind: p.kind as Kind,
      body: p.body,
      attempts: typeof p.attempts === 'number' && Number.isFinite(p.attempts) ? p.attempts : 0,
      createdAt: p.createdAt as number,
    });
  }
  return out;
}

export interface TernClientOptions {
  /** `ws://host:port/ws`. */
  url: string;
  /** This device's id (1–64 of `[A-Za-z0-9_.@-]`). */
  device: string;
  /** The access token, or a function asked before every connection attempt. */
  token: string | (() => string | Promise<string>);
  /** Socket factory; default: the global `WebSocket`. */
  connect?: WebSocketFactory;
  backoff?: BackoffOptions;
  /** A send without an answer this long is sent again (same cmid). */
  sendTimeoutMs?: number;
  /** For a conversation this device has never seen, fetch only this many latest entries. */
  initialHistory?: number;
  /** Entries per `sync` page. */
  syncPage?: number;
  /** Sends kept waiting at most; `send` rejects beyond. */
  outboxMax?: number;
  /** Keeps the outbox across reloads (default: in memory only). */
  outboxStore?: OutboxStore;
  /** Random source for cmids and jitter (tests). */
  random?: () => number;
}

/** Ack after this many unacked entries (PROTOCOL.md: at least every 64). */
const ACK_EVERY_N = 64;
/** ...or after this long (PROTOCOL.md: or every second). */
const ACK_INTERVAL_MS = 1000;
/** How often the outbox is checked for sends to repeat. */
const OUTBOX_TICK_MS = 1000;
/** Extra silence tolerated beyond the heartbeat before the socket is deemed dead. */
const WATCHDOG_SLACK_MS = 5000;
/** Pings at most this far apart, whatever heartbeat the server announces. */
const PING_INTERVAL_MAX_MS = 15_000;
/** A connection not authenticated this long after the attempt began is dropped and retried. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Thrown (as a rejection) by `send` for a permanent `send_err` or a closed client. */
export class SendError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly cmid: string,
  ) {
    super(message);
    this.name = 'SendError';
  }
}

/** A fresh client message id: 16 random bytes as hex (no secure context needed). */
export function newCmid(random: () => number = Math.random): string {
  const bytes = new Uint8Array(16);
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.getRandomValues && random === Math.random) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

interface Waiter {
  resolve: (ack: SendAck) => void;
  reject: (e: SendError) => void;
}

export class TernClient extends Emitter<ClientEvents> {
  readonly seqs = new SeqTracker();
  private readonly opts: Required<Omit<TernClientOptions, 'connect' | 'outboxStore'>> & {
    connect: WebSocketFactory;
    outboxStore?: OutboxStore;
  };
  private ws: WebSocketLike | null = null;
  private stateInfo: StateInfo = { state: 'idle' };
  private attempt = 0;
  private me: AuthOk | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private outboxTimer: ReturnType<typeof setInterval> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private lastHeard = 0;
  private unacked = new Map<string, number>();
  private unackedCount = 0;
  private syncing = new Set<string>();
  private outbox = new Map<string, PendingSend & { lastSentAt: number }>();
  private waiters = new Map<string, Waiter>();
  /** Bumped per socket, so callbacks of an old socket are ignored. */
  private generation = 0;

  constructor(options: TernClientOptions) {
    super();
    this.opts = {
      backoff: DEFAULT_BACKOFF,
      sendTimeoutMs: 10_000,
      initialHistory: 100,
      syncPage: 100,
      outboxMax: 1000,
      random: Math.random,
      connect: (url, protocols) => new WebSocket(url, protocols) as unknown as WebSocketLike,
      ...options,
    };
    let stored: unknown = null;
    try {
      stored = this.opts.outboxStore?.load();
    } catch {
      // An unavailable store (storage denied to the page): start empty.
    }
    for (const p of restoredSends(stored, this.opts.outboxMax)) {
      this.outbox.set(p.cmid, { ...p, lastSentAt: 0 });
    }
  }

  /** The current connection state. */
  get state(): StateInfo {
    return this.stateInfo;
  }

  /** The `auth_ok` of the current (or last) session. */
  get session(): AuthOk | null {
    return this.me;
  }

  /** Sends waiting for their `send_ack`, oldest first. */
  get pending(): PendingSend[] {
    return [...this.outbox.values()].map(({ lastSentAt: _, ...p }) => p);
  }

  /** Connect (and keep reconnecting until `close`, `pause` or a kick). */
  start(): void {
    if (this.stateInfo.state === 'idle' || this.stateInfo.state === 'paused' || this.stateInfo.state === 'stopped') {
      this.attempt = 0;
      void this.open();
    }
    this.outboxTimer ??= setInterval(() => this.outboxTick(), OUTBOX_TICK_MS);
    // What the store brought back shows at once, also while offline.
    if (this.outbox.size > 0) this.emitOutbox();
  }

  /** Close the socket and stay offline until `resume` (sends keep queueing). */
  pause(): void {
    this.dropSocket(1000, 'paused');
    this.clearRetry();
    this.setState({ state: 'paused' });
  }

  /** Reconnect now after `pause` (or skip a pending backoff wait). */
  resume(): void {
    if (this.stateInfo.state === 'online' || this.stateInfo.state === 'connecting') return;
    this.clearRetry();
    this.attempt = 0;
    void this.open();
  }

  /** Close for good: pending sends are rejected. */
  close(): void {
    this.dropSocket(1000, 'closed');
    this.clearRetry();
    for (const t of [this.pingTimer, this.outboxTimer]) if (t) clearInterval(t);
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.pingTimer = this.outboxTimer = this.ackTimer = null;
    for (const [cmid, w] of this.waiters) w.reject(new SendError('closed', 'the client was closed', cmid));
    this.waiters.clear();
    this.outbox.clear();
    this.saveOutbox();
    this.setState({ state: 'stopped', reason: 'closed' });
  }

  /**
   * Send a message to `to` (`user:<id>`, `group:<id>` or a conv id). Resolves
   * with the `send_ack` once stored; survives reconnects (same cmid);
   * rejects with a `SendError` for a permanent refusal.
   */
  send(to: string, kind: Kind, body: unknown, cmid: string = newCmid(this.opts.random)): Promise<SendAck> {
    const existing = this.waiters.get(cmid);
    if (existing) return Promise.reject(new SendError('bad_request', 'this cmid is already waiting', cmid));
    if (this.outbox.size >= this.opts.outboxMax) {
      return Promise.reject(new SendError('rate_limited', 'too many sends waiting', cmid));
    }
    const p = new Promise<SendAck>((resolve, reject) => this.waiters.set(cmid, { resolve, reject }));
    const item = { cmid, to, kind, body, attempts: 0, createdAt: Date.now(), lastSentAt: 0 };
    this.outbox.set(cmid, item);
    this.transmit(item);
    this.emitOutbox();
    return p;
  }

  /** Mark everything up to `seq` of `conv` read (tells the other devices and members). */
  read(conv: string, seq: number): void {
    this.write({ type: 'read', conv, seq });
  }

  /** Tell the other members this user is typing in `to`. */
  typing(to: string): void {
    this.write({ type: 'typing', to });
  }

  /** Ask for the conversation list (answered by a `convs` event). */
  refreshConvs(): void {
    this.write({ type: 'convs' });
  }

  /** Fetch entries of `conv` after `after` (delivered as `entry` events, deduplicated). */
  sync(conv: string, after: number): void {
    if (this.syncing.has(conv)) return;
    if (this.write({ type: 'sync', conv, after, limit: Math.min(this.opts.syncPage, SYNC_LIMIT_MAX) })) {
      this.syncing.add(conv);
    }
  }

  // ---- connection ----

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.setState({ state: 'connecting' });
    let token: string;
    try {
      token = typeof this.opts.token === 'string' ? this.opts.token : await this.opts.token();
    } catch (e) {
      if (gen === this.generation) this.scheduleRetry(`no token: ${String(e)}`);
      return;
    }
    if (gen !== this.generation) return;
    let ws: WebSocketLike;
    try {
      ws = this.opts.connect(this.opts.url, [SUBPROTOCOL]);
    } catch (e) {
      this.scheduleRetry(`cannot open: ${String(e)}`);
      return;
    }
    this.ws = ws;
    this.clearConnectTimer();
    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      if (gen !== this.generation || this.stateInfo.state !== 'connecting') return;
      this.dropSocket(1000, 'connect timeout');
      this.scheduleRetry('no answer to auth');
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      if (gen !== this.generation) return;
      this.lastHeard = Date.now();
      ws.send(JSON.stringify({ type: 'auth', token, device: this.opts.device }));
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      this.lastHeard = Date.now();
      if (typeof ev.data !== 'string') return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(ev.data) as ServerFrame;
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onerror = () => {
      /* onclose follows */
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.onClosed(ev.code, ev.reason);
    };
  }

  private onClosed(code: number, reason: string): void {
    this.ws = null;
    this.syncing.clear();
    this.stopPing();
    if (this.stateInfo.state === 'stopped' || this.stateInfo.state === 'paused') return;
    if (code === CLOSE.kicked) {
      this.setState({ state: 'stopped', reason: reason || 'kicked' });
      return;
    }
    this.scheduleRetry(code === CLOSE.unauthorized ? 'unauthorized' : `closed (${code})`);
  }

  private scheduleRetry(reason: string): void {
    this.clearRetry();
    const delay = backoffDelay(this.attempt++, this.opts.backoff, this.opts.random);
    this.setState({ state: 'offline', retryInMs: delay, reason });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.open();
    }, delay);
  }

  private clearConnectTimer(): void {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
  }

  private clearRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  private dropSocket(code: number, reason: string): void {
    this.generation++;
    this.clearConnectTimer();
    this.stopPing();
    this.syncing.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
  }

  private startPing(heartbeatMs: number): void {
    this.stopPing();
    const every = Math.min(PING_INTERVAL_MAX_MS, Math.max(100, Math.floor(heartbeatMs / 2)));
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastHeard > heartbeatMs * 2 + WATCHDOG_SLACK_MS) {
        // Silent for too long: the socket is dead even if the browser has not noticed.
        this.dropSocket(1000, 'watchdog');
        this.scheduleRetry('no answer from the server');
        return;
      }
      this.write({ type: 'ping' });
    }, every);
  }

  private stopPing(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  private setState(info: StateInfo): void {
    this.stateInfo = info;
    this.emit('state', info);
  }

  /** Write a frame if online; false when there is no authenticated socket. */
  private write(frame: object): boolean {
    const ws = this.ws;
    if (!ws || this.stateInfo.state !== 'online') return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- frames ----

  private onFrame(f: ServerFrame): void {
    switch (f.type) {
      case 'auth_ok':
        this.clearConnectTimer();
        this.me = f;
        this.attempt = 0;
        this.setState({ state: 'online' });
        this.startPing(f.heartbeat_ms);
        this.emit('authed', f);
        this.write({ type: 'convs' });
        for (const item of this.outbox.values()) this.transmit(item);
        this.emitOutbox();
        break;
      case 'convs_result':
        this.onConvs(f.convs);
        break;
      case 'sync_result': {
        this.syncing.delete(f.conv);
        let last = 0;
        for (const e of f.messages) {
          this.deliver(e, false, false);
          last = Math.max(last, e.seq);
        }
        if (f.has_more && last > 0) this.sync(f.conv, last);
        break;
      }
      case 'msg':
      case 'event':
        if (!this.seqs.knows(f.conv) && f.seq > this.opts.initialHistory + 1) {
          // First sight of a long conversation: fetch only its latest entries.
          this.seqs.skipTo(f.conv, f.seq - 1 - this.opts.initialHistory);
        }
        this.deliver(f, false, true);
        this.noteAck(f.conv, f.seq);
        if (this.seqs.hasGap(f.conv)) this.sync(f.conv, this.seqs.contiguous(f.conv));
        break;
      case 'notice':
        if (f.max_seq > this.seqs.contiguous(f.conv)) this.sync(f.conv, this.seqs.contiguous(f.conv));
        break;
      case 'send_ack':
        this.onSendAck(f);
        break;
      case 'send_err': {
        const item = this.outbox.get(f.cmid);
        if (!item) break;
        if (RETRYABLE_SEND_ERRORS.has(f.code)) {
          // Kept: the outbox tick sends it again after the timeout.
          item.lastSentAt = Date.now();
          break;
        }
        this.outbox.delete(f.cmid);
        const err = new SendError(f.code, f.message, f.cmid);
        this.waiters.get(f.cmid)?.reject(err);
        this.waiters.delete(f.cmid);
        this.emit('sendFailed', err);
        this.emitOutbox();
        break;
      }
      case 'receipt':
        this.emit('receipt', f);
        break;
      case 'typing':
        this.emit('typing', f);
        break;
      case 'kicked':
        this.setState({ state: 'stopped', reason: f.reason || 'kicked' });
        this.dropSocket(1000, 'kicked');
        break;
      case 'error':
        this.emit('error', f);
        break;
      case 'pong':
        break;
    }
  }

  private onConvs(convs: ConvInfo[]): void {
    for (const c of convs) {
      if (!this.seqs.knows(c.conv) && c.max_seq > this.opts.initialHistory) {
        this.seqs.skipTo(c.conv, c.max_seq - this.opts.initialHistory);
      }
      if (c.max_seq > this.seqs.contiguous(c.conv)) this.sync(c.conv, this.seqs.contiguous(c.conv));
    }
    this.emit('convs', convs);
  }

  private onSendAck(a: SendAck): void {
    const item = this.outbox.get(a.cmid);
    if (!item) return; // a late duplicate answer
    this.outbox.delete(a.cmid);
    const entry: MsgEntry = {
      type: 'msg',
      conv: a.conv,
      seq: a.seq,
      from: this.me?.user ?? '',
      device: this.opts.device,
      cmid: a.cmid,
      kind: item.kind,
      body: item.body,
      ts: a.ts,
    };
    this.deliver(entry, true, true);
    this.waiters.get(a.cmid)?.resolve(a);
    this.waiters.delete(a.cmid);
    this.emitOutbox();
  }

  private deliver(entry: Entry, own: boolean, live: boolean): void {
    if (this.seqs.add(entry.conv, entry.seq)) this.emit('entry', { entry, own, live });
  }

  // ---- acks and the outbox ----

  private noteAck(conv: string, seq: number): void {
    this.unacked.set(conv, Math.max(seq, this.unacked.get(conv) ?? 0));
    this.unackedCount++;
    if (this.unackedCount >= ACK_EVERY_N) this.flushAcks();
    else this.ackTimer ??= setTimeout(() => this.flushAcks(), ACK_INTERVAL_MS);
  }

  private flushAcks(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    for (const [conv, seq] of this.unacked) this.write({ type: 'ack', conv, seq });
    this.unacked.clear();
    this.unackedCount = 0;
  }

  private transmit(item: PendingSend & { lastSentAt: number }): void {
    if (this.write({ type: 'send', cmid: item.cmid, to: item.to, kind: item.kind, body: item.body })) {
      item.attempts++;
      item.lastSentAt = Date.now();
    }
  }

  private outboxTick(): void {
    if (this.stateInfo.state !== 'online') return;
    const now = Date.now();
    for (const item of this.outbox.values()) {
      if (now - item.lastSentAt >= this.opts.sendTimeoutMs) this.transmit(item);
    }
  }

  private emitOutbox(): void {
    this.saveOutbox();
    this.emit('outbox', this.pending);
  }

  private saveOutbox(): void {
    try {
      this.opts.outboxStore?.save(this.pending);
    } catch {
      // A full or unavailable store: the outbox still works in memory.
    }
  }
}
