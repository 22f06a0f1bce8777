import type { MicrovmRecord, Owner } from "../store/records.js";

/**
 * What the endpoint proxy needs from the rest of the server. The proxy knows
 * HTTP and tokens; where a MicroVM's guest port is reachable is the engine's
 * business, so it comes through here.
 */
export interface EndpointTargets {
  /** The MicroVM a token names, in any state; undefined when there is none. */
  findMicrovm(owner: Owner, microvmId: string): Promise<MicrovmRecord | undefined>;
  /**
   * A loopback address reaching `guestPort` inside the MicroVM's guest. Throws
   * TargetUnavailable when the MicroVM has no running VM (not started yet,
   * suspended, or gone).
   */
  connect(microvmId: string, guestPort: number): Promise<{ host: string; port: number }>;
  /**
   * Brings a MicroVM whose idle policy has autoResumeEnabled back to RUNNING:
   * resumes it if SUSPENDED, or waits while it suspends or starts. Resolves
   * with the record once RUNNING, or once it is terminating or gone (then
   * undefined); throws TargetUnavailable when it does not run within `timeoutMs`.
   */
  wake(microvm: MicrovmRecord, timeoutMs: number): Promise<MicrovmRecord | undefined>;
  /** Traffic to or from the MicroVM was seen (requests, stream and WebSocket data): the idle policy's clock. */
  activity(microvmId: string): void;
}

export class TargetUnavailable extends Error {
  constructor(
    readonly microvmId: string,
    message: string,
  ) {
    super(message);
    this.name = "TargetUnavailable";
  }
}
