import type { BuildSettled } from "../builder/image-builder.js";
import { Failure } from "../domain/failure.js";
import type { HostPlatform } from "../platform.js";
import type { BuildRecord, MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";

/** Where the waiter hears of builds that end: the image builder's `settled` event (any emitter of it, so a test can inject one). */
export interface BuildEvents {
  on(event: "settled", listener: (settled: BuildSettled) => void): unknown;
}

/**
 * A MicroVM may be run while its version still builds: it waits here, PENDING,
 * for the version's build for this host to succeed (or fails with the build's
 * reason).
 */
export class BuildWaiter {
  private readonly listeners = new Set<(build: BuildRecord) => void>();

  constructor(
    private readonly store: Store,
    builder: BuildEvents,
    private readonly platform: HostPlatform,
  ) {
    builder.on("settled", ({ build }) => this.listeners.forEach((wake) => wake(build)));
  }

  async successfulBuild(microvm: MicrovmRecord, signal: AbortSignal): Promise<BuildRecord> {
    for (;;) {
      // Listening before looking, so a build that settles in between is not missed; removed whatever happens.
      let wake!: () => void;
      const settled = new Promise<void>((resolve) => (wake = resolve));
      const onSettled = (build: BuildRecord) => {
        if (build.imageId === microvm.imageId && build.version === microvm.imageVersion) wake();
      };
      this.listeners.add(onSettled);
      signal.addEventListener("abort", wake, { once: true });
      try {
        const builds = (await this.store.listBuilds(microvm.imageId, microvm.imageVersion, { architecture: this.platform.architecture, limit: 100 })).items;
        const ready = builds.find((b) => b.buildState === "SUCCESSFUL");
        if (ready) return ready;
        if (!builds.some((b) => b.buildState === "PENDING" || b.buildState === "IN_PROGRESS")) {
          const failed = builds.find((b) => b.buildState === "FAILED");
          throw new Failure(
            failed
              ? `Image version ${microvm.imageVersion} failed to build: ${failed.stateReason ?? "no reason recorded"}`
              : `Image version ${microvm.imageVersion} has no build for ${this.platform.architecture}.`,
          );
        }
        await settled;
      } finally {
        this.listeners.delete(onSettled);
        signal.removeEventListener("abort", wake);
      }
      signal.throwIfAborted();
    }
  }
}
