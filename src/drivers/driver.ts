/**
 * A VM driver starts, snapshots, restores and stops virtual machines; the
 * engine decides which and when. The first driver is QEMU (src/drivers/qemu);
 * the interface keeps to what a Firecracker driver could do as well: a kernel,
 * an initramfs, one root disk (or a copy-on-write overlay of one), guest memory
 * in a file, user-mode networking with loopback forwards, and the agent's channel.
 *
 * A Vm is a small state machine, and each of its actions is legal in some of
 * its states only (the table `legalIn`); an action out of order is a
 * VmActionNotLegal, never a half-done change:
 *
 *   driver.start / driver.restore / driver.adopt ─► running
 *   running ──snapshot──► saved (paused, state on disk: it must never run again) ──stop──► stopped
 *   running ──stop──► stopped        any state ──the process ends──► stopped
 *   running, saved ──detach──► detached (left running for the next server to adopt)
 *
 * Failures of the driver itself are VmErrors: their messages hold host detail
 * (paths, QEMU's words) for the log, never for a client.
 */
export type VmState = "running" | "saved" | "detached" | "stopped";

export type VmAction = "forward" | "whenReady" | "snapshot" | "detach" | "stop";

/** Where each action is legal. `stop` of a stopped VM answers how it ended. */
export const legalIn: Record<VmAction, readonly VmState[]> = {
  forward: ["running"],
  whenReady: ["running"],
  snapshot: ["running"],
  detach: ["running", "saved"],
  stop: ["running", "saved", "stopped"],
};

/** An action asked of a VM in a state where it is not legal (Firecracker's OperationNotSupported). */
export class VmActionNotLegal extends Error {
  override name = "VmActionNotLegal";

  constructor(
    readonly vm: string,
    readonly action: VmAction,
    readonly state: VmState,
  ) {
    super(`VM ${vm}: ${action} is not legal while it is ${state} (legal while ${legalIn[action].join(", ")})`);
  }
}

/** Throws VmActionNotLegal unless `action` is legal in `state`. */
export function checkLegal(vm: string, action: VmAction, state: VmState): void {
  if (!legalIn[action].includes(state)) throw new VmActionNotLegal(vm, action, state);
}

/** The driver failed to do what was asked (start, restore, snapshot, forward); `cause` holds what lies beneath. */
export class VmError extends Error {
  override name = "VmError";
}
export interface VmSpec {
  /** Names the VM in logs: a MicroVM id or a build id. */
  name: string;
  /** A directory of its own for sockets, the pid file and the console log. Created by the driver, removed by the caller. */
  runDir: string;
  kernel: string;
  initrd: string;
  /**
   * The root disk: a raw image the VM writes to, or a qcow2 overlay over one.
   * With `backing`, the driver makes a fresh overlay at `path` over it (a run);
   * without, `path` is an overlay made before (a resume).
   */
  disk: { path: string; format: "raw" } | { path: string; format: "qcow2"; backing?: string };
  memoryMiB: number;
  /**
   * Guest RAM as a file. Shared while a snapshot is built (the file then holds
   * the memory); private when restoring (pages map lazily, copy-on-write, and
   * the file never changes, so one snapshot serves many VMs).
   */
  memory?: { path: string; share: boolean };
  /** Outbound network access (the INTERNET_EGRESS connector); without it the guest reaches nothing but its forwards. */
  egress: boolean;
}

/** How a VM ended: its process's exit, and what the agent last said. */
export interface VmExit {
  code: number | null;
  signal: string | null;
  /** The application's exit status when the agent reported one before the VM stopped. */
  applicationExitCode?: number;
  /** Why, in words, for a MicroVM's stateReason. */
  reason: string;
}

export type AgentEvent =
  | { kind: "stdout" | "stderr"; line: string }
  | { kind: "ready" }
  | { kind: "exit"; code: number }
  | { kind: "log" | "error"; text: string };

/** The files of a snapshot: device state (small), guest RAM (sparse) and the disk as it was. */
export interface SnapshotFiles {
  statePath: string;
  memoryPath: string;
}

export interface Vm {
  readonly name: string;
  /** Where the VM is in its state machine (see above). */
  readonly state: VmState;
  /** The VM's process id, for adoption and accounting. */
  readonly pid: number;
  /** Settles when the VM is gone, whatever the reason. Never rejects. */
  readonly exited: Promise<VmExit>;
  /** Settles when the application listens on its readiness port; rejects with a Failure (words fit for a client) if the VM ends first or `timeoutMs` passes. */
  whenReady(timeoutMs: number): Promise<void>;
  /** Everything the agent reports, in order. Output from before the call is not replayed. */
  onAgentEvent(listener: (event: AgentEvent) => void): void;
  /** A loopback port forwarded to `guestPort` in the guest (added on first use, then kept). */
  forward(guestPort: number): Promise<number>;
  /**
   * Saves the VM to `statePath` and leaves it paused, disk flushed: stop it
   * next. Device state only when its RAM is in a shared memory file (a build);
   * `withMemory` puts its RAM in the state file too (a suspension, whose RAM
   * is a private copy-on-write mapping of the build's).
   */
  snapshot(statePath: string, options?: { withMemory?: boolean }): Promise<void>;
  /** Lets go of the VM without stopping it (the server stops; the next one adopts it). */
  detach(): void;
  /**
   * Stops the VM: the agent powers it off, or after `graceMs` it is killed (a
   * saved VM at once: it must not run on). Resolves once the process is gone.
   */
  stop(graceMs?: number): Promise<VmExit>;
}

export interface VmDriver {
  /** For logs and status output, e.g. "QEMU 7.2.22 (TCG)". */
  readonly description: string;
  /** Starts a VM and returns once its process runs and its control channels are connected; cleans up after itself on failure. */
  start(spec: VmSpec): Promise<Vm>;
  /**
   * Starts a VM from a snapshot: `spec.memory` names the snapshot's memory file
   * (mapped privately) and `spec.disk` an overlay of its disk. Returns once the
   * guest runs again, with its clock corrected and fresh entropy. On failure
   * nothing is left running, and an error of the cleanup joins the first one.
   */
  restore(spec: VmSpec & { memory: { path: string; share: false } }, statePath: string, options?: { memoryInState?: boolean }): Promise<Vm>;
  /** Takes over a VM that a previous run of the server started in `runDir`; undefined when it is gone. */
  adopt(name: string, runDir: string): Promise<Vm | undefined>;
  /** Stops a VM that a previous run of the server started in `runDir` and that is not adopted; whether there was one. */
  killLeftover(runDir: string): Promise<boolean>;
}
