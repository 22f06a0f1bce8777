import { mkdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";

/**
 * Every file of one MicroVM, named in one place (as e2b's SandboxFiles): what
 * a run creates, what a suspension keeps, and what cleanup after a terminate
 * and reconcile after a crash remove, so that the two can never disagree.
 *
 *   <dataDir>/microvms/<id>/
 *     run/                  the VM's sockets, pid file and console (the driver's); gone whenever no VM runs
 *     disk.qcow2            its disk: a copy-on-write overlay of the build's snapshot disk
 *     suspended.state       memory and devices while SUSPENDED (written whole as .partial, then renamed)
 *     output.log            the application's stdout and stderr
 */
export class MicrovmFiles {
  readonly dir: string;
  readonly runDir: string;
  readonly disk: string;
  readonly suspendedState: string;
  readonly partialSuspendedState: string;
  readonly outputLog: string;

  constructor(dataDir: string, readonly microvmId: string) {
    this.dir = join(dataDir, "microvms", microvmId);
    this.runDir = join(this.dir, "run");
    this.disk = join(this.dir, "disk.qcow2");
    this.suspendedState = join(this.dir, "suspended.state");
    this.partialSuspendedState = `${this.suspendedState}.partial`;
    this.outputLog = join(this.dir, "output.log");
  }

  async create(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  /** Whether a complete suspended state is on disk. */
  async hasSuspendedState(): Promise<boolean> {
    return stat(this.suspendedState).then(
      () => true,
      () => false,
    );
  }

  /** What only a running VM needs: its run directory. A suspended MicroVM keeps its disk and state. */
  async removeRuntime(): Promise<void> {
    await rm(this.runDir, { recursive: true, force: true });
    await rm(this.partialSuspendedState, { force: true });
  }

  async removeSuspendedState(): Promise<void> {
    await rm(this.suspendedState, { force: true });
  }

  /** Everything but the application's output, which stays readable after the end. */
  async removeAll(): Promise<void> {
    await this.removeRuntime();
    await rm(this.disk, { force: true });
    await this.removeSuspendedState();
  }
}
