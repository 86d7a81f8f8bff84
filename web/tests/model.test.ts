import { describe, expect, it } from 'vitest';
import { describeEvent, Model } from '../src/app/model';
import type { Entry } from '../src/lib';

const msg = (conv: string, seq: number, from: string): Entry => ({
  type: 'msg',
  conv,
  seq,
  from,
  device: 'd',
  cmid: `c${seq}`,
  kind: 'text',
  body: `m${seq}`,
  ts: seq,
});

describe('chat model', () => {
  it('keeps entries in seq order and counts unread from the read mark', () => {
    const m = new Model('alice');
    m.add(msg('dm:alice:bob', 2, 'bob'));
    const c = m.add(msg('dm:alice:bob', 1, 'bob'));
    expect(c.entries.map((e) => e.seq)).toEqual([1, 2]);
    expect(m.unread(c)).toBe(2);
    m.add(msg('dm:alice:bob', 3, 'alice'));
    expect(m.unread(c)).toBe(0); // what I wrote, I have read
    expect(m.title(c)).toBe('bob');
  });

  it('names groups from their events and counts readers', () => {
    const m = new Model('alice');
    const c = m.add({ type: 'event', conv: 'group:team', seq: 1, code: 1501, data: { users: ['alice', 'bob'], name: 'Team' }, ts: 1 });
    expect(m.title(c)).toBe('Team (#team)');
    c.reads.set('bob', 3);
    c.reads.set('carol', 1);
    expect(m.readBy(c, 2)).toBe(1);
    expect(describeEvent({ type: 'event', conv: 'group:team', seq: 2, code: 1509, data: { users: ['carol'] }, ts: 2 })).toBe('carol added');
  });
});
