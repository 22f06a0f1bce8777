import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import type { TestServer } from "../test/support/server.js";
import { Guests, qemuProcesses } from "../test/vm/support.js";
import type { HttpTarget } from "./http-load.js";

type Obj = Record<string, unknown>;

/** How long a MicroVM may take to reach a state the bench waits for. */
const STATE_TIMEOUT_MS = 120_000;

/**
 * What the parts of the bench do with the MicroVMs of one server: the API calls,
 * the endpoint as a client reaches it, the MicroVM's files and its QEMU process.
 */
export class MicrovmApi {
  private readonly guests: Guests;

  constructor(readonly t: TestServer) {
    this.guests = Guests.of(t);
  }

  /** Sends RunMicrovm and returns the new MicroVM's id (it is PENDING). */
  async run(input: { imageIdentifier: string } & Obj): Promise<string> {
    return (await this.t.client.call("RunMicrovm", input)).microvmId as string;
  }

  getMicrovm(microvmId: string): Promise<Obj> {
    return this.t.client.call("GetMicrovm", { microvmIdentifier: microvmId });
  }

  /** A token for the endpoint's port 8080. */
  token(microvmId: string): Promise<string> {
    return this.guests.token(microvmId);
  }

  /** The endpoint as a client reaches it: the proxy's address, the MicroVM's host name, the token. */
  endpointTarget(microvmId: string, token: string): HttpTarget {
    const proxy = new URL(this.t.server.proxyUrl);
    return { host: proxy.hostname, port: Number(proxy.port), headers: { host: `${microvmId}.microvms.localhost:${proxy.port}`, "x-aws-proxy-auth": token } };
  }

  /**
   * Polls GetMicrovm every `everyMs` until the MicroVM is in `state`; fails at
   * once if it ends instead. Returns the record and when the poll saw it (performance.now()).
   */
  async untilState(microvmId: string, state: string, everyMs = 50): Promise<{ microvm: Obj; seenAt: number }> {
    const deadline = performance.now() + STATE_TIMEOUT_MS;
    for (;;) {
      const microvm = await this.getMicrovm(microvmId);
      const seenAt = performance.now();
      if (microvm.state === state) return { microvm, seenAt };
      if (microvm.state === "TERMINATED") throw new Error(`MicroVM ${microvmId} ended: ${String(microvm.stateReason)}`);
      if (seenAt > deadline) throw new Error(`MicroVM ${microvmId} is still ${String(microvm.state)}, not ${state}, after ${STATE_TIMEOUT_MS / 1000} s`);
      await sleep(everyMs);
    }
  }

  /** Terminates the MicroVM, waits for TERMINATED, and checks that its QEMU is gone. */
  async terminate(microvmId: string): Promise<void> {
    await this.t.client.call("TerminateMicrovm", { microvmIdentifier: microvmId });
    await this.untilState(microvmId, "TERMINATED");
    const left = qemuProcesses(microvmId);
    if (left.length > 0) throw new Error(`QEMU ${left.join(", ")} still runs for terminated MicroVM ${microvmId}`);
  }

  /** The one QEMU process of a running MicroVM. */
  qemuOf(microvmId: string): number {
    const pids = qemuProcesses(microvmId);
    if (pids.length !== 1) throw new Error(`expected one QEMU for ${microvmId}, found ${pids.length}`);
    return pids[0]!;
  }

  /** The MicroVM's directory: disk.qcow2, output.log, run/, and suspended.state while it is suspended. */
  dirOf(microvmId: string): string {
    return join(this.t.dataDir, "microvms", microvmId);
  }
}
