import { join } from "node:path";
import { Command } from "commander";
import { pino } from "pino";
import { BaseImages } from "../catalogue/base-images.js";
import { findManagedImage, managedImages } from "../catalogue/catalogue.js";
import { resolveConfig } from "../config/config.js";

/** `microvms base build|list`: the managed base images' root filesystems, built ahead of first use. */

function baseImagesOf(dataDir: string | undefined, cacheDir: string | undefined): BaseImages {
  const config = resolveConfig({ dataDir, cacheDir });
  // Progress lines and the error message say it all; MICROVMS_LOG_LEVEL asks for the log as well.
  const log = pino({ level: process.env.MICROVMS_LOG_LEVEL || "silent" }, pino.destination(2));
  return new BaseImages({ dir: join(config.cacheDir, "base-images"), log });
}

function mebibytes(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export function baseCommand(): Command {
  const base = new Command("base").description("Managed base images (busybox, Debian, Node.js, Python): build ahead of time, list");

  base
    .command("build")
    .description("Build a managed base image now (the server otherwise builds it on first use); Debian images need root")
    .argument("<name>", `one of ${managedImages.map((m) => m.name).join(", ")}`)
    .option("--version <version>", "catalogue version (default: the newest)")
    .option("--data-dir <dir>", "data directory (MICROVMS_DATA_DIR)")
    .option("--cache-dir <dir>", "cache of base images and guest files (MICROVMS_CACHE_DIR; default <data dir>/cache)")
    .action(async (name: string, flags: { version?: string; dataDir?: string; cacheDir?: string }) => {
      const version = flags.version ?? findManagedImage(name)?.versions.at(-1) ?? "1";
      const images = baseImagesOf(flags.dataDir, flags.cacheDir);
      const before = await images.find(name, version);
      const build = before ?? (await images.ensure(name, version, (line) => process.stderr.write(`${line}\n`)));
      if (before) process.stderr.write(`${name}/${version} was already built\n`);
      process.stdout.write(`${build.rootDir}\n`);
      process.stdout.write(`${mebibytes(build.sizeInBytes)} (${build.sizeInBytes} bytes), built ${build.builtAt.toISOString()}\n`);
    });

  base
    .command("list")
    .description("Every managed base image and version, built or not")
    .option("--data-dir <dir>", "data directory (MICROVMS_DATA_DIR)")
    .option("--cache-dir <dir>", "cache of base images and guest files (MICROVMS_CACHE_DIR; default <data dir>/cache)")
    .action(async (flags: { dataDir?: string; cacheDir?: string }) => {
      const images = baseImagesOf(flags.dataDir, flags.cacheDir);
      const rows: string[][] = [["NAME", "VERSION", "STATE", "BUILT AT", "SIZE"]];
      for (const image of managedImages) {
        for (const version of image.versions) {
          const build = await images.find(image.name, version);
          rows.push(
            build
              ? [image.name, version, "built", build.builtAt.toISOString(), mebibytes(build.sizeInBytes)]
              : [image.name, version, "not built", "-", "-"],
          );
        }
      }
      const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const row of rows) process.stdout.write(`${row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
      process.stderr.write(`base images in ${images.dir}\n`);
    });

  return base;
}
