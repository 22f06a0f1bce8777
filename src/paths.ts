import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The repository root, found by walking up from this module: the same code runs
 * from `src/` (tsx) and from `dist/src/` (compiled), at different depths.
 */
function findProjectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "model"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the microvms project root above " + import.meta.url);
    dir = parent;
  }
}

export const projectRoot = findProjectRoot();
export const serviceModelPath = join(projectRoot, "model", "lambda-microvms-2025-09-09.json");
