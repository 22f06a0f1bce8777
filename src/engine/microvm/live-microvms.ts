import type { Logger } from "pino";
import { LiveMicrovm } from "./live-microvm.js";
import { MicrovmFiles } from "./microvm-files.js";

/**
 * The per-MicroVM work queue. Work on one MicroVM is serialized: each step runs
 * once the previous one on that MicroVM has finished, so a suspend never
 * overlaps a resume; different MicroVMs proceed in parallel. A step that throws
 * is logged and the queue goes on.
 */
export class LiveMicrovms {
  private readonly live = new Map<string, LiveMicrovm>();

  constructor(
    private readonly dataDir: string,
    private readonly now: () => number,
    private readonly log: Logger,
  ) {}

  files(microvmId: string): MicrovmFiles {
    return this.live.get(microvmId)?.files ?? new MicrovmFiles(this.dataDir, microvmId);
  }

  find(microvmId: string): LiveMicrovm | undefined {
    return this.live.get(microvmId);
  }

  of(microvmId: string): LiveMicrovm {
    let live = this.live.get(microvmId);
    if (!live) {
      live = new LiveMicrovm(microvmId, new MicrovmFiles(this.dataDir, microvmId), this.now());
      this.live.set(microvmId, live);
    }
    return live;
  }

  /** Queues `work` after whatever is under way on the MicroVM. */
  enqueue(microvmId: string, work: (live: LiveMicrovm) => Promise<void>): void {
    const live = this.of(microvmId);
    live.chain = live.chain
      .then(() => work(live))
      .catch((error: unknown) => this.log.error({ err: error, microvmId }, "MicroVM work failed"));
  }

  /** The MicroVM has ended: nothing of it stays in memory. */
  forget(microvmId: string): void {
    this.live.get(microvmId)?.cancelTimers();
    this.live.delete(microvmId);
  }

  all(): LiveMicrovm[] {
    return [...this.live.values()];
  }
}
