import { setTimeout as sleep } from "node:timers/promises";

/**
 * Time as the engine sees it: injected, so that its timers (idle, suspended
 * period, maximum duration) can be tested in milliseconds with a manual clock.
 */
export interface Clock {
  now(): Date;
  /** Calls `fn` once `ms` have passed; never holds the process open. Any range: suspendedDurationSeconds has no maximum. */
  after(ms: number, fn: () => void): Timer;
  sleep(ms: number): Promise<void>;
}

export interface Timer {
  cancel(): void;
}

/** setTimeout's largest delay (24.8 days); longer ones are chained. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export const systemClock: Clock = {
  now: () => new Date(),
  after(ms, fn) {
    let timer: NodeJS.Timeout;
    const arm = (remaining: number) => {
      timer = setTimeout(() => (remaining > MAX_TIMEOUT_MS ? arm(remaining - MAX_TIMEOUT_MS) : fn()), Math.min(Math.max(0, remaining), MAX_TIMEOUT_MS)).unref();
    };
    arm(ms);
    return { cancel: () => clearTimeout(timer) };
  },
  sleep: (ms) => sleep(ms, undefined, { ref: false }),
};
