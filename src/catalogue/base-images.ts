import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import type { Logger } from "pino";
import { withLockFile } from "./lock-file.js";
import { findManagedImage, managedImages } from "./catalogue.js";
import { findRecipe, type BaseImageRecipe, type RecipeContext } from "./recipes.js";
import { runCommand } from "../process/run-command.js";

/**
 * The managed base images' root filesystem trees, built locally on first use and cached.
 *
 *   ensure(name, version)
 *     ├─ built? (manifest.json present) ────────────────────────► the build
 *     ├─ already building in this process? ─► share that promise ─► the build
 *     └─ lock <name>/<version>.lock (waits while another process builds it)
 *          ├─ built meanwhile? ─────────────────────────────────► the build
 *          ├─ remove what crashed builds left
 *          ├─ recipe fills <name>/.<version>.building-<id>/root
 *          ├─ measure (du), write manifest.json last, sync
 *          └─ rename to <name>/<version> (atomic: complete or absent) ─► the build
 *
 * Layout of the base-images directory:
 *   <name>/<version>/root/           the tree (BaseImageBuild.rootDir)
 *   <name>/<version>/manifest.json   {name, version, builtAt, sizeInBytes}
 *   <name>/<version>.lock            flock'd while building
 *   debian-cache/                    .debs downloaded by debootstrap, shared by the Debian images
 *   debian-cache.lock                flock'd while a debootstrap uses the cache
 */

export interface BaseImageBuild {
  name: string;
  version: string;
  /** The root filesystem tree: copy it (`cp -al`), never change it. */
  rootDir: string;
  /** When the build finished. */
  builtAt: Date;
  /** Apparent size of the tree in bytes (`du -sb`). */
  sizeInBytes: number;
}

export interface BaseImagesOptions {
  /** Where builds are cached, e.g. <dataDir>/base-images. */
  dir: string;
  log: Logger;
  /** Default: MICROVMS_DEBIAN_MIRROR, else http://deb.debian.org/debian. */
  debianMirror?: string;
}

interface Manifest {
  name: string;
  version: string;
  builtAt: string;
  sizeInBytes: number;
}

export const DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian";
const MANIFEST = "manifest.json";
const BUILDING = ".building-";

/** Commands like debootstrap, chroot and umount live in sbin directories that a user's PATH may lack. */
function pathWithSbin(path: string | undefined): string {
  const dirs = (path ?? "/usr/local/bin:/usr/bin:/bin").split(":").filter(Boolean);
  for (const sbin of ["/usr/local/sbin", "/usr/sbin", "/sbin"]) if (!dirs.includes(sbin)) dirs.push(sbin);
  return dirs.join(":");
}

/** Mount points at or below dir, deepest first (debootstrap mounts /proc and /sys in its target). */
async function mountsBelow(dir: string): Promise<string[]> {
  const info = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const prefix = resolve(dir) + sep;
  return info
    .split("\n")
    .map((line) => line.split(" ")[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))))
    .filter((p) => p.startsWith(prefix) || p === resolve(dir))
    .sort((a, b) => b.length - a.length);
}

/** Removes a build directory, first detaching anything still mounted inside it, never deleting through a mount. */
async function removeBuildDirectory(dir: string, what: string): Promise<void> {
  for (const mountPoint of await mountsBelow(dir)) {
    await runCommand("umount", ["--lazy", mountPoint], { what, env: { ...process.env, PATH: pathWithSbin(process.env.PATH) } });
  }
  const left = await mountsBelow(dir);
  if (left.length > 0) throw new Error(`${what}: cannot remove ${dir}: still mounted: ${left.join(", ")}`);
  await rm(dir, { recursive: true, force: true });
}

function formatSize(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

export class BaseImages {
  readonly dir: string;
  readonly debianMirror: string;
  private readonly log: Logger;
  private readonly inFlight = new Map<string, { promise: Promise<BaseImageBuild>; listeners: Set<(line: string) => void> }>();

  constructor(opts: BaseImagesOptions) {
    this.dir = resolve(opts.dir);
    this.log = opts.log;
    this.debianMirror = opts.debianMirror || process.env.MICROVMS_DEBIAN_MIRROR || DEFAULT_DEBIAN_MIRROR;
  }

  /** Returns the cached build, building it first if needed (once, however many callers and processes ask). */
  async ensure(name: string, version: string, onProgress?: (line: string) => void): Promise<BaseImageBuild> {
    const recipe = this.recipe(name, version);
    const built = await this.find(name, version);
    if (built) return built;

    const key = `${name}/${version}`;
    let flight = this.inFlight.get(key);
    if (!flight) {
      const listeners = new Set<(line: string) => void>();
      if (onProgress) listeners.add(onProgress);
      const emit = (line: string) => {
        for (const listener of listeners) {
          try {
            listener(line);
          } catch (error) {
            this.log.warn({ err: error, baseImage: key }, "progress listener failed");
          }
        }
      };
      const promise = this.buildLocked(recipe, emit).finally(() => this.inFlight.delete(key));
      flight = { promise, listeners };
      this.inFlight.set(key, flight);
    } else if (onProgress) {
      flight.listeners.add(onProgress);
    }
    try {
      return await flight.promise;
    } finally {
      if (onProgress) flight.listeners.delete(onProgress);
    }
  }

  /** The cached build, or undefined when it is not built yet. */
  async find(name: string, version: string): Promise<BaseImageBuild | undefined> {
    this.recipe(name, version);
    const dir = this.versionDir(name, version);
    let text: string;
    try {
      text = await readFile(join(dir, MANIFEST), "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    try {
      const m = JSON.parse(text) as Partial<Manifest>;
      const builtAt = new Date(m.builtAt ?? "");
      if (m.name !== name || m.version !== version || Number.isNaN(builtAt.getTime()) || typeof m.sizeInBytes !== "number") {
        throw new Error("fields missing or wrong");
      }
      return { name, version, rootDir: join(dir, "root"), builtAt, sizeInBytes: m.sizeInBytes };
    } catch (error) {
      this.log.warn({ baseImage: `${name}/${version}`, err: error }, "ignoring an unreadable base image manifest; the image will be rebuilt");
      return undefined;
    }
  }

  private recipe(name: string, version: string): BaseImageRecipe {
    const image = findManagedImage(name);
    if (!image) {
      throw new Error(`unknown managed base image "${name}" (known: ${managedImages.map((m) => m.name).join(", ")})`);
    }
    const recipe = image.versions.includes(version) ? findRecipe(name, version) : undefined;
    if (!recipe) throw new Error(`managed base image ${name} has no version "${version}" (versions: ${image.versions.join(", ")})`);
    return recipe;
  }

  private versionDir(name: string, version: string): string {
    return join(this.dir, name, version);
  }

  private async buildLocked(recipe: BaseImageRecipe, emit: (line: string) => void): Promise<BaseImageBuild> {
    const { name, version } = recipe;
    const imageDir = join(this.dir, name);
    await mkdir(imageDir, { recursive: true });
    const purpose = `building base image ${name}/${version}`;
    const onWait = (holder: { pid: number; host: string } | undefined) =>
      emit(`waiting for another process that is building ${name}/${version}${holder ? ` (pid ${holder.pid} on ${holder.host})` : ""}`);
    return withLockFile(join(imageDir, `${version}.lock`), { purpose, onWait }, async () => {
      const built = await this.find(name, version);
      if (built) return built;
      return this.build(recipe, emit);
    });
  }

  /** Holding the image's lock: builds in a fresh directory and renames it into place. */
  private async build(recipe: BaseImageRecipe, emit: (line: string) => void): Promise<BaseImageBuild> {
    const { name, version } = recipe;
    const what = `base image ${name}/${version}`;
    const log = this.log.child({ baseImage: `${name}/${version}` });
    const imageDir = join(this.dir, name);
    const finalDir = this.versionDir(name, version);

    // Left by crashed builds: unfinished trees, or a directory whose manifest is unreadable.
    for (const entry of await readdir(imageDir)) {
      if (entry.startsWith(`.${version}${BUILDING}`)) await removeBuildDirectory(join(imageDir, entry), what);
    }
    await removeBuildDirectory(finalDir, what);

    const work = join(imageDir, `.${version}${BUILDING}${process.pid}-${randomBytes(4).toString("hex")}`);
    const root = join(work, "root");
    await mkdir(root, { recursive: true, mode: 0o755 });
    const started = Date.now();
    const progress = (line: string) => {
      log.info(line);
      emit(line);
    };
    progress(`building ${name}/${version}`);
    const env = { ...process.env, PATH: pathWithSbin(process.env.PATH) };
    const ctx: RecipeContext = {
      root,
      debianMirror: this.debianMirror,
      debianCacheDir: join(this.dir, "debian-cache"),
      run: (command, args, opts) =>
        runCommand(command, args, {
          what,
          env,
          dieWithParent: true,
          captureStdout: opts?.captureStdout,
          debianPackage: opts?.debianPackage,
          onLine: (line, stream) => {
            log.debug({ command, stream }, line);
            emit(line);
          },
        }),
      progress,
      withDebianCache: (fn) =>
        withLockFile(join(this.dir, "debian-cache.lock"), { purpose: what, onWait: () => emit("waiting for another Debian image build to finish with the package cache") }, fn),
    };

    try {
      await recipe.build(ctx);
      const du = await runCommand("du", ["--summarize", "--bytes", root], { what, env, captureStdout: true });
      const sizeInBytes = Number(du.split(/\s/)[0]);
      if (!Number.isSafeInteger(sizeInBytes)) throw new Error(`${what}: cannot read the size from du: ${du.trim()}`);
      const builtAt = new Date();
      const manifest: Manifest = { name, version, builtAt: builtAt.toISOString(), sizeInBytes };
      await writeFile(join(work, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
      // On disk before it becomes visible, so that not even a power cut leaves a torn tree under the final name.
      await runCommand("sync", ["--file-system", work], { what, env });
      await rename(work, finalDir);
      progress(`${name}/${version} built in ${((Date.now() - started) / 1000).toFixed(1)} s: ${formatSize(sizeInBytes)}`);
      return { name, version, rootDir: join(finalDir, "root"), builtAt, sizeInBytes };
    } catch (error) {
      log.error({ err: error }, "base image build failed");
      await removeBuildDirectory(work, what).catch((cleanup: unknown) => log.warn({ err: cleanup, dir: work }, "cannot remove a failed build"));
      throw error;
    }
  }
}
