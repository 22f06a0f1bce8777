import { rm } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import type { Vm, VmDriver, VmSpec } from "../src/drivers/driver.js";
import type { GuestAssets } from "../src/agent/assets.js";
import { firstOk } from "./http-load.js";

/**
 * One VM started straight through the driver, without the server, from a
 * build's snapshot files: the same image either cold-booted or restored.
 *
 *   cold boot: driver.start (a fresh qcow2 overlay on the build's disk.ext4; anonymous RAM; kernel, agent, bootstrap, httpd)
 *   restore:   driver.restore (a fresh overlay; memory.ram mapped privately, state.bin loaded, clock resynced)
 *   ─► vm.forward(guest port) ─► GET until the first byte of a 200
 *   ─► vm.stop ─► overlay and run directory removed
 */

/** A successful build's snapshot, as image-builder.ts lays it out, and the guest memory it was taken with. */
export interface BuildSnapshot {
  disk: string;
  memoryPath: string;
  statePath: string;
  memoryMiB: number;
}

export type StartKind = "cold boot" | "restore";

/** Milliseconds after the VM was asked for. */
export interface DriverStartRun {
  kind: StartKind;
  /** start() or restore() returned: the overlay exists, QEMU runs and its channels are connected (restored: the guest runs again). */
  vmUp: number;
  /** QEMU forwards a loopback port to the guest port. */
  forward: number;
  /** The first byte of a 200 from the guest. */
  firstByte: number;
  /** GETs sent until then. */
  attempts: number;
  /** vm.stop(), ms. */
  stopMs: number;
}

export async function firstByteThroughDriver(options: {
  kind: StartKind;
  driver: VmDriver;
  assets: GuestAssets;
  snapshot: BuildSnapshot;
  /** Holds the overlay and the run directory; inside the server's data directory, so its leftover check sees these VMs. */
  workDir: string;
  name: string;
  guestPort: number;
  path: string;
  timing: { intervalMs: number; patienceMs: number; timeoutMs: number };
}): Promise<DriverStartRun> {
  const { kind, driver, assets, snapshot, name } = options;
  const overlayPath = join(options.workDir, `${name}.qcow2`);
  const runDir = join(options.workDir, name);
  const started = performance.now();
  const since = () => performance.now() - started;
  let vm: Vm | undefined;
  try {
    const spec: VmSpec = {
      name,
      runDir,
      kernel: assets.kernel,
      initrd: assets.initrd,
      disk: { path: overlayPath, format: "qcow2", backing: snapshot.disk },
      memoryMiB: snapshot.memoryMiB,
      egress: false,
    };
    vm =
      kind === "cold boot"
        ? await driver.start(spec)
        : await driver.restore({ ...spec, memory: { path: snapshot.memoryPath, share: false } }, snapshot.statePath);
    const vmUp = since();
    const port = await vm.forward(options.guestPort);
    const forward = since();
    const ok = await firstOk({ host: "127.0.0.1", port, headers: { host: `127.0.0.1:${port}` } }, options.path, options.timing);
    const firstByte = ok.firstByteAt - started;
    const stopping = performance.now();
    await vm.stop();
    return { kind, vmUp, forward, firstByte, attempts: ok.attempts, stopMs: performance.now() - stopping };
  } finally {
    await vm?.stop(0); // after a failure; once stopped, stop() only answers how it ended
    await rm(runDir, { recursive: true, force: true });
    await rm(overlayPath, { force: true });
  }
}
