// The chat's view of its conversations, fed by the client library's events.
import { dmPeer, groupOf, type Entry, type EventEntry } from '../lib';

export interface Conv {
  id: string;
  /** Entries held, ascending by seq. */
  entries: Entry[];
  maxSeq: number;
  /** This user's read mark (from convs, our reads, our other devices' receipts). */
  readSeq: number;
  /** Other users' read marks, from live receipts. */
  reads: Map<string, number>;
  /** Who is typing, until when (ms). */
  typing: Map<string, number>;
  /** Group name from its events, if any. */
  name?: string;
  lastTs: number;
}

/** Entries kept per conversation in memory; older ones are dropped from view. */
export const ENTRIES_KEPT_MAX = 500;

export class Model {
  readonly convs = new Map<string, Conv>();
  constructor(readonly me: string) {}

  ensure(id: string): Conv {
    let c = this.convs.get(id);
    if (!c) {
      c = { id, entries: [], maxSeq: 0, readSeq: 0, reads: new Map(), typing: new Map(), lastTs: 0 };
      this.convs.set(id, c);
    }
    return c;
  }

  /** Insert an entry in seq order (the library already dropped duplicates). */
  add(e: Entry): Conv {
    const c = this.ensure(e.conv);
    let i = c.entries.length;
    while (i > 0 && c.entries[i - 1].seq > e.seq) i--;
    if (c.entries[i - 1]?.seq !== e.seq) c.entries.splice(i, 0, e);
    if (c.entries.length > ENTRIES_KEPT_MAX) c.entries.splice(0, c.entries.length - ENTRIES_KEPT_MAX);
    c.maxSeq = Math.max(c.maxSeq, e.seq);
    c.lastTs = Math.max(c.lastTs, e.ts);
    if (e.type === 'event') {
      const name = (e.data as { name?: unknown } | null)?.name;
      if (typeof name === 'string') c.name = name;
    } else if (e.from === this.me && e.seq > c.readSeq) {
      // What this user wrote (from any device) is read by them.
      c.readSeq = e.seq;
    }
    return c;
  }

  unread(c: Conv): number {
    return Math.max(0, c.maxSeq - c.readSeq);
  }

  title(c: Conv): string {
    const peer = dmPeer(c.id, this.me);
    if (peer !== null) return peer === this.me ? `${peer} (you)` : peer;
    const g = groupOf(c.id);
    return c.name ? `${c.name} (#${g})` : `#${g ?? c.id}`;
  }

  /** Conversations, latest activity first. */
  sorted(): Conv[] {
    return [...this.convs.values()].sort((a, b) => b.lastTs - a.lastTs || a.id.localeCompare(b.id));
  }

  /** Users typing in `c` now, other than this user. */
  typers(c: Conv, now: number): string[] {
    return [...c.typing].filter(([u, until]) => u !== this.me && until > now).map(([u]) => u);
  }

  /** How many others have read `seq` of `c`. */
  readBy(c: Conv, seq: number): number {
    let n = 0;
    for (const [u, s] of c.reads) if (u !== this.me && s >= seq) n++;
    return n;
  }
}

/** A one-line description of a group event. */
export function describeEvent(e: EventEntry): string {
  const d = (e.data ?? {}) as { users?: unknown; name?: unknown };
  const users = Array.isArray(d.users) ? d.users.join(', ') : '';
  switch (e.code) {
    case 1501:
      return `Group created${users ? ` with ${users}` : ''}`;
    case 1502:
      return `Group renamed${typeof d.name === 'string' ? ` to ${d.name}` : ''}`;
    case 1504:
      return `${users || 'A member'} left`;
    case 1508:
      return `${users || 'Members'} removed`;
    case 1509:
      return `${users || 'Members'} added`;
    case 1520:
      return 'Group dismissed';
    default:
      return `Event ${e.code}`;
  }
}
