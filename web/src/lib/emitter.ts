// A tiny typed event emitter (no dependency, works in browsers and node).

export type Listener<T> = (value: T) => void;

export class Emitter<Events extends object> {
  private listeners: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};

  /** Subscribe; returns the function that unsubscribes. */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.listeners[event];
    if (!set) {
      set = new Set();
      this.listeners[event] = set;
    }
    set.add(fn);
    return () => set.delete(fn);
  }

  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const fn of this.listeners[event] ?? []) {
      try {
        fn(value);
      } catch (e) {
        // A broken listener must not break the connection logic.
        console.error(`tern: listener for ${String(event)} threw`, e);
      }
    }
  }
}
