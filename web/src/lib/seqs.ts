// Which (conv, seq) pairs this device already has: the dedup key of the
// protocol ("drop an entry whose (conv, seq) they have") and the source of
// the gap check after a reconnect.

interface ConvSeqs {
  /** Every seq ≤ contiguous is had (or deliberately skipped as history). */
  contiguous: number;
  /** Seqs above `contiguous` that arrived early (a push ahead of a sync). */
  above: Set<number>;
  /** Highest seq seen. */
  max: number;
}

/** Per conversation: the seqs held, compactly (a high-water mark plus the few above it). */
export class SeqTracker {
  private convs = new Map<string, ConvSeqs>();

  private get(conv: string): ConvSeqs {
    let c = this.convs.get(conv);
    if (!c) {
      c = { contiguous: 0, above: new Set(), max: 0 };
      this.convs.set(conv, c);
    }
    return c;
  }

  /** Whether the conversation was ever seen. */
  knows(conv: string): boolean {
    return this.convs.has(conv);
  }

  /** Whether (conv, seq) is held. */
  has(conv: string, seq: number): boolean {
    const c = this.convs.get(conv);
    return !!c && (seq <= c.contiguous || c.above.has(seq));
  }

  /** Record (conv, seq); true when it is new (deliver it), false for a duplicate. */
  add(conv: string, seq: number): boolean {
    if (!Number.isSafeInteger(seq) || seq < 1) return false;
    const c = this.get(conv);
    if (seq <= c.contiguous || c.above.has(seq)) return false;
    c.max = Math.max(c.max, seq);
    if (seq === c.contiguous + 1) {
      c.contiguous = seq;
      while (c.above.delete(c.contiguous + 1)) c.contiguous += 1;
    } else {
      c.above.add(seq);
    }
    return true;
  }

  /** Treat every seq ≤ `seq` as held (history the client chose not to fetch). */
  skipTo(conv: string, seq: number): void {
    const c = this.get(conv);
    if (seq <= c.contiguous) return;
    c.contiguous = seq;
    c.max = Math.max(c.max, seq);
    for (const s of c.above) if (s <= seq) c.above.delete(s);
    while (c.above.delete(c.contiguous + 1)) c.contiguous += 1;
  }

  /** Every seq up to this one is held: sync from here. */
  contiguous(conv: string): number {
    return this.convs.get(conv)?.contiguous ?? 0;
  }

  /** Highest seq held. */
  max(conv: string): number {
    return this.convs.get(conv)?.max ?? 0;
  }

  /** Whether some seq below `max` is missing. */
  hasGap(conv: string): boolean {
    const c = this.convs.get(conv);
    return !!c && c.max > c.contiguous;
  }
}
