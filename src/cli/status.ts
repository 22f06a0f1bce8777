import { join } from "node:path";
import { Command } from "commander";
import { pino } from "pino";
import { BaseImages } from "../catalogue/base-images.js";
import { managedImages } from "../catalogue/catalogue.js";
import { resolveConfig } from "../config/config.js";
import { chooseAcceleration, qemuVersion } from "../drivers/qemu/acceleration.js";
import { guestAssets } from "../agent/assets.js";

/**
 * `microvms status`: what `serve` would run MicroVMs with on this host, without
 * serving: QEMU, the guest kernel and initramfs, KVM or TCG and why (probed
 * the way `serve` probes, and cached the same way), and the base images built.
 */
export function statusCommand(): Command {
  return new Command("status")
    .description("Show how this host runs MicroVMs: QEMU, guest kernel, KVM or TCG (probed), base images")
    .option("--data-dir <dir>", "data directory (MICROVMS_DATA_DIR)")
    .option("--cache-dir <dir>", "cache of base images and guest files (MICROVMS_CACHE_DIR; default <data dir>/cache)")
    .option("--accel <mode>", "auto, kvm or tcg (MICROVMS_ACCEL; default auto)")
    .action(async (flags: { dataDir?: string; cacheDir?: string; accel?: string }) => {
      const config = resolveConfig(flags);
      const log = pino({ level: process.env.MICROVMS_LOG_LEVEL || "silent" }, pino.destination(2));
      const version = await qemuVersion();
      const assets = await guestAssets(config.cacheDir);
      const choice = await chooseAcceleration({ setting: config.accel, kernel: assets.kernel, initrd: assets.initrd, qemuVersion: version, cacheDir: config.cacheDir, log });
      const baseImages = new BaseImages({ dir: join(config.cacheDir, "base-images"), log });
      const built: string[] = [];
      for (const image of managedImages) {
        for (const v of image.versions) if (await baseImages.find(image.name, v)) built.push(`${image.name}/${v}`);
      }
      const rows: [string, string][] = [
        ["qemu", `${version} (qemu-system-x86_64)`],
        ["acceleration", `${choice.accel} (${choice.because})`],
        ["guest kernel", `${assets.kernelRelease} (${assets.kernel})`],
        ["initramfs", assets.initrd],
        ["guest agent", assets.agent],
        ["data dir", config.dataDir],
        ["cache dir", config.cacheDir],
        ["base images built", built.length > 0 ? built.join(", ") : "none yet (built on first use, or: microvms base build NAME)"],
      ];
      for (const [name, value] of rows) process.stdout.write(`${name.padEnd(18)} ${value}\n`);
    });
}
