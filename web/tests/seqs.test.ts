import { describe, expect, it } from 'vitest';
import { backoffDelay, dmConv, dmPeer, groupOf, isValidId, SeqTracker } from '../src/lib';

describe('SeqTracker', () => {
  it('delivers each (conv, seq) once and tracks the contiguous mark', () => {
    const t = new SeqTracker();
    expect(t.add('c', 1)).toBe(true);
    expect(t.add('c', 1)).toBe(false);
    expect(t.add('c', 3)).toBe(true);
    expect(t.contiguous('c')).toBe(1);
    expect(t.hasGap('c')).toBe(true);
    expect(t.add('c', 2)).toBe(true);
    expect(t.contiguous('c')).toBe(3);
    expect(t.hasGap('c')).toBe(false);
    expect(t.add('c', 3)).toBe(false);
    expect(t.has('c', 2)).toBe(true);
    expect(t.has('other', 1)).toBe(false);
  });

  it('keeps conversations apart', () => {
    const t = new SeqTracker();
    t.add('a', 1);
    expect(t.add('b', 1)).toBe(true);
    expect(t.max('a')).toBe(1);
  });

  it('skipTo treats older history as held and absorbs early arrivals', () => {
    const t = new SeqTracker();
    t.add('c', 12);
    t.skipTo('c', 10);
    expect(t.contiguous('c')).toBe(10);
    t.add('c', 11);
    expect(t.contiguous('c')).toBe(12);
    expect(t.add('c', 5)).toBe(false);
  });

  it('refuses nonsense seqs', () => {
    const t = new SeqTracker();
    expect(t.add('c', 0)).toBe(false);
    expect(t.add('c', -1)).toBe(false);
    expect(t.add('c', 1.5)).toBe(false);
  });
});

describe('ids', () => {
  it('orders dm conversations by bytes', () => {
    expect(dmConv('bob', 'alice')).toBe('dm:alice:bob');
    expect(dmConv('alice', 'alice')).toBe('dm:alice:alice');
    expect(dmConv('B', 'a')).toBe('dm:B:a');
    expect(dmPeer('dm:alice:bob', 'bob')).toBe('alice');
    expect(dmPeer('group:g', 'bob')).toBe(null);
    expect(groupOf('group:g1')).toBe('g1');
  });

  it('validates ids like the server', () => {
    expect(isValidId('alice.b@x-y_z')).toBe(true);
    expect(isValidId('')).toBe(false);
    expect(isValidId('a b')).toBe(false);
    expect(isValidId('x'.repeat(64))).toBe(true);
    expect(isValidId('x'.repeat(65))).toBe(false);
  });
});

describe('backoff', () => {
  it('grows, is capped, and keeps at least half of the cap', () => {
    const o = { initialMs: 100, maxMs: 1000, factor: 2 };
    expect(backoffDelay(0, o, () => 0)).toBe(50);
    expect(backoffDelay(0, o, () => 1)).toBe(100);
    expect(backoffDelay(3, o, () => 1)).toBe(800);
    expect(backoffDelay(10, o, () => 1)).toBe(1000);
    expect(backoffDelay(10, o, () => 0)).toBe(500);
  });
});
