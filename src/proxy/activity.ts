import type { Readable } from "node:stream";

/**
 * Tells the idle policy that a MicroVM has traffic. A request is always reported;
 * the data of its streams (bodies, server-sent events, WebSocket frames) is reported
 * at most once per `intervalMs` per MicroVM, because a busy stream emits thousands
 * of chunks a second and the idle clock needs no finer grain than that.
 */
export class ActivityMeter {
  private readonly lastReported = new Map<string, number>();

  constructor(
    private readonly report: (microvmId: string) => void,
    private readonly nowMs: () => number,
    private readonly intervalMs = 1000,
  ) {}

  /** A request (or WebSocket upgrade) was accepted for the MicroVM. */
  request(microvmId: string): void {
    this.reportAt(microvmId, this.nowMs());
  }

  /** Bytes flowed to or from the MicroVM. */
  data(microvmId: string): void {
    const now = this.nowMs();
    const since = now - (this.lastReported.get(microvmId) ?? -Infinity);
    // A clock that stepped back (since < 0) reports, and restarts the interval.
    if (since >= 0 && since < this.intervalMs) return;
    this.reportAt(microvmId, now);
  }

  /**
   * Counts the stream's data as the MicroVM's activity. Only call this once the
   * stream is piped or otherwise consumed: a `data` listener starts it flowing.
   */
  watch(stream: Readable, microvmId: string): void {
    stream.on("data", () => this.data(microvmId));
  }

  private reportAt(microvmId: string, now: number): void {
    this.lastReported.set(microvmId, now);
    // Forget quiet MicroVMs now and then, so the map holds only busy ones.
    if (this.lastReported.size > 4096) {
      for (const [id, at] of this.lastReported) if (now - at >= this.intervalMs) this.lastReported.delete(id);
    }
    this.report(microvmId);
  }
}
