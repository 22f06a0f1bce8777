import type { Clock, Timer } from "../../src/engine/clock.js";

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * A Clock whose time moves only when a test says so: the engine's timers
 * (idle, suspended period, maximum duration) fire inside `advance`, in
 * deadline order, each with now() at its own deadline, as they would in real
 * time. A timer armed for a moment already past fires on the next turn of the
 * event loop, as setTimeout(fn, 0) would.
 *
 * `sleep` is the engine's polling pause (MicrovmEndpoints.wake): it resolves
 * after a real millisecond (or at the next advance) without moving the clock,
 * so a wake polls until the MicroVM runs, and its deadline only passes when the
 * test advances time past it.
 */
export class ManualClock implements Clock {
  private ms: number;
  private seq = 0;
  private pending: Pending[] = [];
  private sleepers = new Set<() => void>();

  constructor(start = Date.parse("2030-01-01T00:00:00Z")) {
    this.ms = start;
  }

  now(): Date {
    return new Date(this.ms);
  }

  /** Sets the time without firing anything (use `advance` to let timers fire). */
  set(date: Date): void {
    this.ms = date.getTime();
  }

  after(ms: number, fn: () => void): Timer {
    const timer: Pending = { at: this.ms + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.pending.push(timer);
    if (timer.at <= this.ms) setImmediate(() => this.fireDue(this.ms));
    return {
      cancel: () => {
        timer.cancelled = true;
        this.pending = this.pending.filter((t) => t !== timer);
      },
    };
  }

  sleep(_ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timeout);
        this.sleepers.delete(done);
        resolve();
      };
      const timeout = setTimeout(done, 1);
      this.sleepers.add(done);
    });
  }

  /** Moves time on by `ms`, firing every timer that comes due on the way (and timers those arm, if due too). */
  advance(ms: number): void {
    const target = this.ms + ms;
    this.fireDue(target);
    this.ms = Math.max(this.ms, target);
    for (const wake of [...this.sleepers]) wake();
  }

  /** Moves time on by `seconds`. */
  advanceSeconds(seconds: number): void {
    this.advance(seconds * 1000);
  }

  /** Deadlines of the timers armed now, soonest first (epoch ms). */
  deadlines(): number[] {
    return this.pending.map((t) => t.at).sort((a, b) => a - b);
  }

  private fireDue(target: number): void {
    for (;;) {
      const next = this.pending.filter((t) => t.at <= target).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!next) return;
      this.pending = this.pending.filter((t) => t !== next);
      if (next.cancelled) continue;
      this.ms = Math.max(this.ms, next.at);
      next.fn();
    }
  }
}
