import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { qemuProcesses } from "../test/vm/support.js";
import { fileSize, freeBytes, type FileSize } from "./disk-usage.js";
import { firstOkThroughEndpoint } from "./http-load.js";
import { memAvailableMiB, qemuMemory, roundMemory, type QemuMemory } from "./host-memory.js";
import { heading, mib, round, table } from "./report.js";
import { suspend, type SuspendBenchContext } from "./suspend-resume.js";

/**
 * What N MicroVMs cost the host running, and the same N suspended:
 *
 *   MemAvailable, free disk ─► RunMicrovm × N side by side ─► all RUNNING ─► a GET 200 through each endpoint
 *   ─► settle ─► QEMU PSS and RSS of each ─► SuspendMicrovm × N side by side ─► all SUSPENDED
 *   ─► QEMU processes (none) and the suspended.state and disk.qcow2 of each
 *   ─► estimates: MemAvailable ÷ PSS per running MicroVM, free disk ÷ suspended.state per suspended one
 *   ─► TerminateMicrovm × N
 */

export interface DensitySummary {
  microvms: number;
  guestMiB: number;
  running: {
    qemuProcesses: number;
    /** Sums over the N QEMU processes, MiB. */
    rssMiB: number;
    pssMiB: number;
    perMicrovm: QemuMemory[];
  };
  suspended: {
    qemuProcesses: number;
    /** SuspendMicrovm × N sent → all SUSPENDED seen, ms. */
    allSuspendedMs: number;
    /** Sums over the N suspended.state files, MiB. */
    stateApparentMiB: number;
    stateAllocatedMiB: number;
    /** Sum over the N disk overlays (disk.qcow2), allocated, MiB: kept while suspended as well. */
    diskOverlayAllocatedMiB: number;
  };
  /** Estimates from the per-MicroVM means above, not measured at that scale. */
  estimate: {
    /** /proc/meminfo MemAvailable before the N ran. */
    memAvailableMiB: number;
    /** Free space on the data directory's file system before the N ran. */
    freeDiskMiB: number;
    pssPerRunningMiB: number;
    stateAllocatedPerSuspendedMiB: number;
    running: number;
    suspended: number;
  };
}

export async function benchSuspendedDensity(c: SuspendBenchContext, n: number, settleSeconds: number): Promise<DensitySummary> {
  heading(`10. Host memory of ${n} running MicroVMs against the same ${n} suspended ("${c.image}", guest memory ${c.guestMiB} MiB each)`);
  const memAvailable = memAvailableMiB();
  const freeDisk = (await freeBytes(c.microvms.t.dataDir)) / (1024 * 1024);
  const ids: string[] = [];
  try {
    for (let i = 0; i < n; i++) ids.push(await c.microvms.run({ imageIdentifier: c.image }));
    await Promise.all(ids.map((id) => c.microvms.untilState(id, "RUNNING")));
    await Promise.all(
      ids.map(async (id) => firstOkThroughEndpoint(c.microvms.endpointTarget(id, await c.microvms.token(id)), c.path, { intervalMs: c.pollMs, timeoutMs: c.timeoutMs })),
    );
    await sleep(settleSeconds * 1000);
    const perMicrovm = ids.map((id) => roundMemory(qemuMemory(c.microvms.qemuOf(id), c.guestMiB)));
    const runningProcesses = ids.flatMap((id) => qemuProcesses(id)).length;

    const sent = performance.now();
    await Promise.all(ids.map((id) => suspend(c, id)));
    const allSuspendedMs = performance.now() - sent;
    const suspendedProcesses = ids.flatMap((id) => qemuProcesses(id)).length;
    const states = await Promise.all(ids.map((id) => fileSize(join(c.microvms.dirOf(id), "suspended.state"))));
    const overlays = await Promise.all(ids.map((id) => fileSize(join(c.microvms.dirOf(id), "disk.qcow2"))));

    const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
    const sumMiB = (sizes: FileSize[], pick: (s: FileSize) => number) => mib(sum(sizes.map(pick)));
    const rssMiB = round(sum(perMicrovm.map((m) => m.rssMiB)), 1);
    const pssMiB = round(sum(perMicrovm.map((m) => m.pssMiB)), 1);
    const stateAllocatedMiB = sumMiB(states, (s) => s.allocated);
    const pssPerRunningMiB = pssMiB / n;
    const stateAllocatedPerSuspendedMiB = stateAllocatedMiB / n;
    const summary: DensitySummary = {
      microvms: n,
      guestMiB: c.guestMiB,
      running: { qemuProcesses: runningProcesses, rssMiB, pssMiB, perMicrovm },
      suspended: {
        qemuProcesses: suspendedProcesses,
        allSuspendedMs: round(allSuspendedMs),
        stateApparentMiB: sumMiB(states, (s) => s.apparent),
        stateAllocatedMiB,
        diskOverlayAllocatedMiB: sumMiB(overlays, (s) => s.allocated),
      },
      estimate: {
        memAvailableMiB: round(memAvailable),
        freeDiskMiB: round(freeDisk),
        pssPerRunningMiB: round(pssPerRunningMiB, 1),
        stateAllocatedPerSuspendedMiB: round(stateAllocatedPerSuspendedMiB, 1),
        running: Math.floor(memAvailable / pssPerRunningMiB),
        suspended: Math.floor(freeDisk / stateAllocatedPerSuspendedMiB),
      },
    };
    report(summary, settleSeconds);
    return summary;
  } finally {
    await Promise.all(ids.map((id) => c.microvms.terminate(id)));
  }
}

function report(s: DensitySummary, settleSeconds: number): void {
  const { running, suspended, estimate } = s;
  console.log(
    table(
      [`${s.microvms} MicroVMs`, "QEMU processes", "RSS MiB", "PSS MiB", "suspended.state apparent MiB", "suspended.state allocated MiB", "disk.qcow2 allocated MiB"],
      [
        ["running", running.qemuProcesses, running.rssMiB, running.pssMiB, "-", "-", "-"],
        ["suspended", suspended.qemuProcesses, 0, 0, suspended.stateApparentMiB, suspended.stateAllocatedMiB, suspended.diskOverlayAllocatedMiB],
      ],
    ),
  );
  console.log(
    `running: sums over the QEMU processes, ${settleSeconds} s after each had served a GET through its endpoint; suspended: all ${s.microvms} SUSPENDED ${suspended.allSuspendedMs} ms after the SuspendMicrovm calls (side by side)`,
  );
  console.log("the disk overlays (disk.qcow2) are there running or suspended; only suspended.state is what suspending adds");
  console.log();
  console.log(
    table(
      ["estimate for this host, from the per-MicroVM figures above", "per MicroVM MiB", "host has MiB", "MicroVMs (estimate)"],
      [
        ["running: MemAvailable ÷ PSS per running MicroVM", estimate.pssPerRunningMiB, estimate.memAvailableMiB, estimate.running],
        ["suspended: free disk in the data dir ÷ suspended.state allocated", estimate.stateAllocatedPerSuspendedMiB, estimate.freeDiskMiB, estimate.suspended],
      ],
    ),
  );
  console.log(
    `estimates, not measured at that scale: MemAvailable and free disk read before the ${s.microvms} ran; CPU, the per-VM disk overlay, the kernel's own cost per VM and page-cache pressure are left out, and PSS splits the shared snapshot pages among only ${s.microvms} QEMUs`,
  );
}
