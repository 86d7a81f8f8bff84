// Frame shapes of Tern's WebSocket protocol, subprotocol `tern.v1.json`
// (PROTOCOL.md, "WebSocket endpoint"). Only what a client needs.

/** The JSON subprotocol name offered in `Sec-WebSocket-Protocol`. */
export const SUBPROTOCOL = 'tern.v1.json';

/** Message kinds the server accepts. */
export const KINDS = ['text', 'image', 'file', 'voice', 'custom'] as const;
export type Kind = (typeof KINDS)[number];

/** Whether `k` is one of [`KINDS`]. */
export function isKind(k: unknown): k is Kind {
  return typeof k === 'string' && (KINDS as readonly string[]).includes(k);
}

/** Body of a media message (`image`, `file`, `voice`): a link, never bytes. */
export interface MediaBody {
  url: string;
  mime?: string;
  size?: number;
  name?: string;
  duration_ms?: number;
}

/** A stored message, pushed live or returned by `sync`. */
export interface MsgEntry {
  type: 'msg';
  conv: string;
  seq: number;
  from: string;
  device: string;
  cmid: string;
  kind: Kind;
  body: unknown;
  ts: number;
}

/** A stored group event (1501 created, 1502 renamed, 1504 left, 1508 removed, 1509 added, 1520 dismissed). */
export interface EventEntry {
  type: 'event';
  conv: string;
  seq: number;
  code: number;
  data: unknown;
  ts: number;
}

/** One timeline entry of a conversation. */
export type Entry = MsgEntry | EventEntry;

export interface AuthOk {
  type: 'auth_ok';
  user: string;
  device: string;
  heartbeat_ms: number;
  ack_timeout_ms: number;
  ts: number;
}

export interface SendAck {
  type: 'send_ack';
  cmid: string;
  conv: string;
  seq: number;
  ts: number;
}

export interface SendErr {
  type: 'send_err';
  cmid: string;
  code: string;
  message: string;
}

export interface Receipt {
  type: 'receipt';
  conv: string;
  user: string;
  read_seq: number;
}

export interface Typing {
  type: 'typing';
  conv: string;
  user: string;
}

export interface Notice {
  type: 'notice';
  conv: string;
  max_seq: number;
}

export interface SyncResult {
  type: 'sync_result';
  conv: string;
  messages: Entry[];
  has_more: boolean;
}

/** One conversation of `convs_result`. */
export interface ConvInfo {
  conv: string;
  max_seq: number;
  read_seq: number;
  unread: number;
}

export interface ConvsResult {
  type: 'convs_result';
  convs: ConvInfo[];
}

export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
}

export interface Kicked {
  type: 'kicked';
  reason: string;
}

/** Every frame the server sends. */
export type ServerFrame =
  | AuthOk
  | SendAck
  | SendErr
  | MsgEntry
  | EventEntry
  | Receipt
  | Typing
  | Notice
  | SyncResult
  | ConvsResult
  | ErrorFrame
  | Kicked
  | { type: 'pong'; ts: number };

/** Close codes the client acts on. */
export const CLOSE = {
  unauthorized: 4401,
  ackTimeout: 4408,
  kicked: 4409,
  shuttingDown: 1001,
} as const;

/** `send_err` codes worth trying again later with the same cmid. */
export const RETRYABLE_SEND_ERRORS: ReadonlySet<string> = new Set(['rate_limited', 'unavailable']);

/** Largest `limit` of one `sync` (PROTOCOL.md: ≤ 500). */
export const SYNC_LIMIT_MAX = 500;

const ID_RE = /^[A-Za-z0-9_.@-]{1,64}$/;

/** A valid user, group or device id: 1–64 bytes of `[A-Za-z0-9_.@-]`. */
export function isValidId(id: string): boolean {
  return ID_RE.test(id);
}

/** The dm conversation of users a and b: `dm:<lesser>:<greater>` in byte order. */
export function dmConv(a: string, b: string): string {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** Users of a dm conversation, or null for anything else. */
export function dmUsers(conv: string): [string, string] | null {
  const m = /^dm:([^:]+):([^:]+)$/.exec(conv);
  return m ? [m[1], m[2]] : null;
}

/** The other member of a dm seen by `me` (me for a self-chat); null if not a dm. */
export function dmPeer(conv: string, me: string): string | null {
  const users = dmUsers(conv);
  if (!users) return null;
  return users[0] === me ? users[1] : users[0];
}

/** The group id of a `group:<gid>` conversation, or null. */
export function groupOf(conv: string): string | null {
  return conv.startsWith('group:') ? conv.slice('group:'.length) : null;
}
