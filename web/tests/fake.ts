// A scripted stand-in for the server side of a WebSocket.
import type { WebSocketFactory, WebSocketLike } from '../src/lib';

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** Frames the client sent, parsed. */
  sent: Record<string, unknown>[] = [];
  closedByClient = false;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(data));
  }

  close(): void {
    this.closedByClient = true;
    this.readyState = 3;
  }

  // ---- the server's side ----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  push(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  authOk(user = 'alice', device = 'd1'): void {
    this.push({ type: 'auth_ok', user, device, heartbeat_ms: 30000, ack_timeout_ms: 10000, ts: 1 });
  }

  /** Sent frames of one type. */
  of(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
}

/** A factory that records every socket it made. */
export function fakeFactory(): { connect: WebSocketFactory; sockets: FakeSocket[]; last: () => FakeSocket } {
  const sockets: FakeSocket[] = [];
  return {
    sockets,
    connect: (url, protocols) => {
      const s = new FakeSocket(url, protocols);
      sockets.push(s);
      return s;
    },
    last: () => {
      const s = sockets[sockets.length - 1];
      if (!s) throw new Error('no socket yet');
      return s;
    },
  };
}

export function msg(conv: string, seq: number, from = 'bob', body: unknown = `m${seq}`) {
  return { type: 'msg', conv, seq, from, device: 'x', cmid: `c${seq}`, kind: 'text', body, ts: seq };
}
