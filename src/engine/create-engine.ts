import { join } from "node:path";
import type { Logger } from "pino";
import { ImageBuilder } from "../builder/image-builder.js";
import { BaseImages } from "../catalogue/base-images.js";
import type { ServerConfig } from "../config/config.js";
import { chooseAcceleration, qemuVersion } from "../drivers/qemu/acceleration.js";
import { QemuDriver } from "../drivers/qemu/qemu-driver.js";
import { guestAssets } from "../agent/assets.js";
import type { HostPlatform } from "../platform.js";
import type { Store } from "../store/store.js";
import type { Engine } from "./engine.js";
import type { MicrovmLifecycle } from "../lifecycle/microvm-states.js";
import { NoDriverEngine } from "./no-driver-engine.js";
import { VmEngine } from "./vm-engine.js";

/**
 * Puts the engine together from the configuration:
 *
 *   driver "none" ─► NoDriverEngine (a control plane alone)
 *   driver "qemu" ─► QEMU version ─► kernel + initramfs + agent ─► KVM or TCG (probed)
 *                 ─► base images, image builder, QEMU driver ─► VmEngine
 */
export async function createEngine(deps: {
  config: ServerConfig;
  store: Store;
  lifecycle: MicrovmLifecycle;
  platform: HostPlatform;
  log: Logger;
  now: () => Date;
}): Promise<Engine> {
  const { config, log } = deps;
  if (config.driver === "none") return new NoDriverEngine(deps.store, deps.lifecycle, log);

  const version = await qemuVersion();
  const assets = await guestAssets(config.cacheDir);
  const acceleration = await chooseAcceleration({
    setting: config.accel,
    kernel: assets.kernel,
    initrd: assets.initrd,
    qemuVersion: version,
    cacheDir: config.cacheDir,
    log,
  });
  log.info({ accel: acceleration.accel, because: acceleration.because, kernel: assets.kernelRelease }, "VM acceleration chosen");
  const driver = new QemuDriver(acceleration.accel, version, log.child({ part: "qemu" }));
  const builder = new ImageBuilder({
    store: deps.store,
    driver,
    s3: config.s3,
    registryCredentialsFile: config.registryCredentialsFile,
    startTimeoutMs: config.startTimeoutSeconds * 1000,
    baseImages: new BaseImages({ dir: join(config.cacheDir, "base-images"), log: log.child({ part: "base-images" }) }),
    assets: () => guestAssets(config.cacheDir),
    platform: deps.platform,
    dataDir: config.dataDir,
    maxConcurrentBuilds: config.maxConcurrentBuilds,
    log: log.child({ part: "builder" }),
    now: deps.now,
  });
  return new VmEngine({
    store: deps.store,
    lifecycle: deps.lifecycle,
    driver,
    builder,
    assets: () => guestAssets(config.cacheDir),
    platform: deps.platform,
    dataDir: config.dataDir,
    log,
  });
}
