import { createWriteStream, type WriteStream } from "node:fs";
import type { Hooks } from "../../api/generated/types.js";
import type { Vm, VmExit } from "../../drivers/driver.js";
import type { Timer } from "../clock.js";
import type { MicrovmFiles } from "./microvm-files.js";

/**
 * What the engine holds for a MicroVM while it lives: its VM when one runs,
 * the application's output, its timers, and the work queued on it.
 *
 * A VM's exit is expected when the engine itself stopped it (`release`); any
 * other exit is reported to `onUnexpectedExit`, so whoever ends a VM never has
 * to remember to say so.
 */
export class LiveMicrovm {
  /** The MicroVM's work, one step after another (see LiveMicrovms.enqueue). */
  chain: Promise<void> = Promise.resolve();
  /** Aborted by a terminate or a shutdown: a start or resume under way gives up. */
  readonly abort = new AbortController();
  /** The image version's hooks (run, suspend, resume, terminate). */
  hooks: Hooks | undefined;
  /** When traffic was last seen at the endpoint (epoch ms): the idle policy's clock. */
  lastActivity: number;
  readonly timers: { idle?: Timer; suspendedPeriod?: Timer; maximumDuration?: Timer } = {};
  private current: Vm | undefined;
  private output: WriteStream | undefined;
  private released = false;

  constructor(
    readonly microvmId: string,
    readonly files: MicrovmFiles,
    now: number,
  ) {
    this.lastActivity = now;
  }

  get vm(): Vm | undefined {
    return this.current;
  }

  /** Makes `vm` this MicroVM's: its output goes to the MicroVM's log, and an exit the engine did not ask for is reported. */
  attach(vm: Vm, hooks: Hooks | undefined, onUnexpectedExit: (exit: VmExit) => void): void {
    this.current = vm;
    this.hooks = hooks;
    this.released = false;
    const output = createWriteStream(this.files.outputLog, { flags: "a" });
    this.output = output;
    vm.onAgentEvent((event) => {
      if (event.kind === "stdout" || event.kind === "stderr") output.write(`${event.line}\n`);
    });
    void vm.exited.then((exit) => {
      if (this.current === vm && !this.released) onUnexpectedExit(exit);
    });
  }

  /** Stops the VM (an expected exit) and closes its output; the run directory goes with it. */
  async release(graceMs?: number): Promise<void> {
    this.released = true;
    const vm = this.current;
    this.current = undefined;
    try {
      if (vm && vm.state !== "detached") await vm.stop(graceMs);
    } finally {
      await this.closeOutput();
      await this.files.removeRuntime();
    }
  }

  /** Lets the VM run on without us (the server stops; the next start adopts it). */
  async detach(): Promise<void> {
    this.released = true;
    this.current?.detach();
    this.current = undefined;
    await this.closeOutput();
  }

  cancelTimers(which: (keyof LiveMicrovm["timers"])[] = ["idle", "suspendedPeriod", "maximumDuration"]): void {
    for (const name of which) {
      this.timers[name]?.cancel();
      delete this.timers[name];
    }
  }

  private async closeOutput(): Promise<void> {
    const output = this.output;
    this.output = undefined;
    if (output) await new Promise<void>((resolve) => output.end(resolve));
  }
}
