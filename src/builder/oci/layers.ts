/**
 * Applying an image's layers, lowest first, to one root directory, with the OCI whiteouts.
 *
 *   layer (tar or tar+gzip file) ─ unpackTar ─ LayerWriter ─┬─ <dir>/.wh..wh..opq ─ remove what lower layers put in <dir>
 *                                                           ├─ <dir>/.wh.<name>   ─ remove the lower layers' <dir>/<name>
 *                                                           └─ any other entry    ─ ArtifactWriter (after removing a lower
 *                                                                                    directory that a non-directory replaces)
 *
 * Every entry goes through ArtifactWriter, so a layer is held to the rules of any code artifact
 * (src/builder/unpack.ts): paths stay inside the root and never pass through a symbolic link, device
 * nodes are skipped, set-id bits are dropped. Whiteouts remove only what lower layers put there, as
 * the OCI image spec says: what this layer itself writes stays, whichever comes first in the tar.
 */
import { lstat, open, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Failure } from "../../domain/failure.js";
import { unpackTar } from "../tar.js";
import { ArtifactWriter, entryPath } from "../unpack.js";

/** Lambda's limit on the unpacked size of a container image. */
export const defaultMaxImageBytes = 10 * 1024 ** 3;

const whiteoutPrefix = ".wh.";
const opaqueWhiteout = ".wh..wh..opq";

const layerMediaTypes = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);

/** Throws unless a layer of `mediaType` can be applied: a tar, uncompressed or gzip-compressed. */
export function checkLayerMediaType(reference: string, digest: string, mediaType: string): void {
  if (layerMediaTypes.has(mediaType)) return;
  if (mediaType.endsWith("+zstd")) throw zstdNotSupported(reference);
  throw new Failure(`OCI image ${reference} has a layer ${digest} of media type "${mediaType}", which is not a tar layer we can apply.`);
}

function zstdNotSupported(reference: string): Failure {
  return new Failure(
    `OCI image ${reference} has zstd-compressed layers, which are not supported; push it with gzip-compressed layers ` +
      `(for example with skopeo copy --dest-compress-format gzip).`,
  );
}

/** The root filesystem that an image's layers build up, one `apply` per layer, lowest first. */
export class LayerStack {
  readonly #budget: ByteBudget;

  /** `root` is an existing directory's real path. */
  constructor(
    readonly reference: string,
    readonly root: string,
    maxUnpackedBytes: number = defaultMaxImageBytes,
  ) {
    this.#budget = new ByteBudget(reference, maxUnpackedBytes);
  }

  /** Bytes of regular files written by all layers so far, including files later layers replaced. */
  get writtenBytes(): number {
    return this.#budget.used;
  }

  /** Applies the layer in the file at `path`, a tar, gzip-compressed or not. */
  async apply(path: string): Promise<void> {
    if (await isZstd(path)) throw zstdNotSupported(this.reference);
    const writer = new LayerWriter(this.reference, this.root, this.#budget);
    await unpackTar(path, writer);
    await writer.finish();
  }
}

/**
 * One layer's writer. Besides the entries it writes it remembers every path this layer touched (the
 * entries and their parent directories): a whiteout removes only untouched paths, and because
 * ArtifactWriter trusts the directories it has seen to stay directories, nothing it has seen may be
 * removed under it. A fresh writer per layer starts with nothing seen.
 */
class LayerWriter extends ArtifactWriter {
  readonly #budget: ByteBudget;
  readonly #touched = new Set<string>([""]);

  constructor(reference: string, root: string, budget: ByteBudget) {
    // The budget counts bytes across layers, so the writer's own limit is not used.
    super(reference, root, Number.MAX_SAFE_INTEGER);
    this.#budget = budget;
  }

  override async directory(name: string, mode: number): Promise<void> {
    const rel = this.#relative(name);
    if (await this.#whiteout(name, rel)) return;
    this.#touch(rel);
    await super.directory(name, mode);
  }

  override async file(name: string, mode: number, declaredSize: number, content: AsyncIterable<Buffer>): Promise<void> {
    const rel = this.#relative(name);
    if (await this.#whiteout(name, rel)) return;
    this.#budget.expect(declaredSize);
    await this.#replaceLowerDirectory(name, rel);
    this.#touch(rel);
    await super.file(name, mode, declaredSize, this.#budget.count(content));
  }

  override async symlink(name: string, target: string): Promise<void> {
    const rel = this.#relative(name);
    if (await this.#whiteout(name, rel)) return;
    await this.#replaceLowerDirectory(name, rel);
    this.#touch(rel);
    await super.symlink(name, target);
  }

  override async hardlink(name: string, existing: string): Promise<void> {
    const rel = this.#relative(name);
    if (await this.#whiteout(name, rel)) return;
    await this.#replaceLowerDirectory(name, rel);
    // The link may name a file of a lower layer. ArtifactWriter links only to files beneath
    // directories it has seen, so show it the target's directories first, keeping their modes.
    const parts = this.#relative(existing).split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join("/");
      const stats = await lstatIfExists(join(this.dest, dir));
      if (!stats?.isDirectory()) break;
      this.#touch(dir);
      await super.directory(dir, stats.mode);
    }
    this.#touch(rel);
    await super.hardlink(name, existing);
  }

  /** Applies `rel` if it is a whiteout and returns true; returns false for any other entry. */
  async #whiteout(name: string, rel: string): Promise<boolean> {
    const slash = rel.lastIndexOf("/");
    const dir = slash === -1 ? "" : rel.slice(0, slash);
    const base = rel.slice(slash + 1);
    if (!base.startsWith(whiteoutPrefix)) return false;
    if (base === opaqueWhiteout) {
      if (await this.#isRealDirectory(name, dir)) {
        for (const child of await readdir(join(this.dest, dir))) await this.#removeLower(dir === "" ? child : `${dir}/${child}`);
      }
    } else if (!base.startsWith(`${whiteoutPrefix}${whiteoutPrefix}`)) {
      // `.wh..wh.*` names other than the opaque marker are AUFS bookkeeping, with nothing to apply.
      const hidden = base.slice(whiteoutPrefix.length);
      if (hidden === "" || hidden === "." || hidden === "..") {
        throw new Failure(`Code artifact ${this.uri} has a whiteout "${name}" that names no file.`);
      }
      if (await this.#isRealDirectory(name, dir)) await this.#removeLower(dir === "" ? hidden : `${dir}/${hidden}`);
    }
    return true;
  }

  /** A non-directory entry replaces a directory of a lower layer, as it would in an overlay. */
  async #replaceLowerDirectory(name: string, rel: string): Promise<void> {
    if (this.#touched.has(rel)) return; // this layer's own directory: ArtifactWriter refuses to replace it
    const slash = rel.lastIndexOf("/");
    if (!(await this.#isRealDirectory(name, slash === -1 ? "" : rel.slice(0, slash)))) return;
    if ((await lstatIfExists(join(this.dest, rel)))?.isDirectory()) await rm(join(this.dest, rel), { recursive: true });
  }

  /**
   * Removes what lower layers put at `rel`: all of it if this layer has not touched it, else what
   * lies beneath it that this layer has not touched. `rm` removes links without following them.
   */
  async #removeLower(rel: string): Promise<void> {
    const path = join(this.dest, rel);
    if (!this.#touched.has(rel)) {
      await rm(path, { recursive: true, force: true });
      return;
    }
    if (!(await lstatIfExists(path))?.isDirectory()) return;
    for (const child of await readdir(path)) await this.#removeLower(`${rel}/${child}`);
  }

  /**
   * Whether `rel` and each directory above it is a real directory. Missing means false (there is
   * nothing below it to remove); a symbolic link on the way is refused, as ArtifactWriter refuses
   * to write through one, so that no whiteout removes anything outside the root.
   */
  async #isRealDirectory(name: string, rel: string): Promise<boolean> {
    if (rel === "") return true;
    const parts = rel.split("/");
    for (let i = 1; i <= parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      const stats = await lstatIfExists(join(this.dest, prefix));
      if (stats === undefined) return false;
      if (stats.isSymbolicLink()) {
        throw new Failure(
          `Code artifact ${this.uri} has an entry "${name}" that would be applied through the symbolic link "${prefix}"; ` +
            `entries may not be placed beneath a symbolic link.`,
        );
      }
      if (!stats.isDirectory()) return false;
    }
    return true;
  }

  #touch(rel: string): void {
    const parts = rel.split("/");
    for (let i = 1; i <= parts.length; i++) this.#touched.add(parts.slice(0, i).join("/"));
  }

  /** An entry's path relative to the root, by ArtifactWriter's rules (which it checks again). */
  #relative(name: string): string {
    return entryPath(this.uri, name);
  }
}

/** The unpacked bytes of all layers together, counted as they arrive. */
class ByteBudget {
  used = 0;

  constructor(
    readonly reference: string,
    readonly max: number,
  ) {}

  /** Fails a file early when its declared size alone would exceed the limit. */
  expect(declaredSize: number): void {
    if (this.used + declaredSize > this.max) throw this.#tooLarge();
  }

  async *count(content: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    for await (const chunk of content) {
      this.used += chunk.length;
      if (this.used > this.max) throw this.#tooLarge();
      yield chunk;
    }
  }

  #tooLarge(): Failure {
    return new Failure(
      `OCI image ${this.reference} is larger than ${this.max} bytes when unpacked, the limit for the unpacked size of an image.`,
    );
  }
}

/** The bytes of the regular files under `root`, a hard-linked file counted once. */
export async function regularFileBytes(root: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.isFile()) {
        const stats = await lstat(path, { bigint: true });
        const inode = `${stats.dev}:${stats.ino}`;
        if (stats.nlink > 1n) {
          if (seen.has(inode)) continue;
          seen.add(inode);
        }
        total += Number(stats.size);
      }
    }
  };
  await walk(root);
  return total;
}

async function isZstd(path: string): Promise<boolean> {
  const file = await open(path, "r");
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await file.read(head, 0, 4, 0);
    return bytesRead === 4 && head.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]));
  } finally {
    await file.close();
  }
}

async function lstatIfExists(path: string) {
  return lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ENOTDIR") return undefined;
    throw err;
  });
}
