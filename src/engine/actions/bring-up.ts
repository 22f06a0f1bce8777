import { guestMemoryMiB } from "../../builder/image-builder.js";
import { Failure } from "../../domain/failure.js";
import type { Vm } from "../../drivers/driver.js";
import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";
import { onUnexpectedExit } from "./end.js";

/**
 * Puts a VM under a MicroVM: restored from its version's snapshot on a fresh
 * disk overlay (a run), or from its own suspended state on the overlay it had
 * (a resume, whose RAM is in the state file, laid over the build's memory).
 *
 *   wait for the version's build ─► driver.restore(snapshot or suspended state) ─► attach (output, exit)
 */
export async function bringUp(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm, from: "snapshot" | "suspension"): Promise<Vm> {
  const build = await ctx.builds.successfulBuild(microvm, live.abort.signal);
  const version = await ctx.store.findVersion(microvm.imageId, microvm.imageVersion);
  if (!version) throw new Failure(`Image version ${microvm.imageVersion} no longer exists.`);
  live.abort.signal.throwIfAborted();
  const snapshot = ctx.builder.snapshotOf(build.buildId);
  const files = live.files;
  await files.create();
  const assets = await ctx.assets();
  const egress = (microvm.config.egressNetworkConnectors ?? version.config.egressNetworkConnectors ?? []).includes("INTERNET_EGRESS");
  const vm = await ctx.driver.restore(
    {
      name: microvm.microvmId,
      runDir: files.runDir,
      kernel: assets.kernel,
      initrd: assets.initrd,
      disk: from === "snapshot" ? { path: files.disk, format: "qcow2", backing: snapshot.disk } : { path: files.disk, format: "qcow2" },
      memoryMiB: guestMemoryMiB(version.config),
      memory: { path: snapshot.memoryPath, share: false },
      egress,
    },
    from === "snapshot" ? snapshot.statePath : files.suspendedState,
    { memoryInState: from === "suspension" },
  );
  live.attach(vm, version.config.hooks, onUnexpectedExit(ctx, microvm));
  return vm;
}

/** Rejects once `signal` aborts: a terminate (or shutdown) takes over from a start or resume. */
export function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}
