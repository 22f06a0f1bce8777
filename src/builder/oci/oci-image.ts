/**
 * An OCI image from a registry as a code artifact: its layers become the guest's root filesystem,
 * its config says how the application starts.
 *
 *   reference ─ parse ─ manifest(tag | digest) ─┬─ index ─ linux/amd64 entry ─ manifest(digest) ─┐
 *                                               └─ image manifest ──────────────────────────────┴─ config blob ─ OciImageConfig
 *                                                                                                  layers, lowest first:
 *                                                                                                    download (digest checked) ─ LayerStack.apply
 *
 * Every failure the user can fix (a wrong reference, a missing tag, refused access, an unsupported
 * image) is a Failure naming the reference. On failure `rootDir` may hold part of the image;
 * the caller removes it.
 */
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Failure } from "../../domain/failure.js";
import { loadRegistryCredentials } from "./credentials.js";
import { checkLayerMediaType, defaultMaxImageBytes, LayerStack, regularFileBytes } from "./layers.js";
import { imageConfigMediaTypes, parseImageConfig, parseManifest, selectPlatform, type Manifest, type OciImageConfig } from "./manifest.js";
import { parseOciReference } from "./reference.js";
import { RegistryClient } from "./registry.js";

export type { OciImageConfig } from "./manifest.js";
export { defaultMaxImageBytes } from "./layers.js";

/** Image configs are small; the largest seen in the wild are a few hundred KiB of history. */
const maxConfigBytes = 8 * 1024 * 1024;
/** An index may name further indexes; real images nest at most once. */
const maxIndexDepth = 2;

export interface FetchOciImageOptions {
  /** A Docker config.json with credentials by registry: `{"auths": {"host:port": {"auth": base64("user:pass")}}}`. */
  credentialsFile?: string;
  /** Refuse images whose layers write more bytes of regular files; 10 GiB (Lambda's image limit) by default. */
  maxUnpackedBytes?: number;
}

export interface FetchedOciImage {
  /** Bytes of the regular files in the root filesystem the layers made. */
  sizeInBytes: number;
  /** The digest the reference resolved to (an index's, for a multi-platform image): `registry/repo@digest` names this image for good. */
  digest: string;
  config: OciImageConfig;
}

/** Whether a code artifact URI is an OCI image reference: it has no `scheme://`. */
export function isOciReference(uri: string): boolean {
  return uri !== "" && !uri.includes("://");
}

/** Fetches the image `reference` names and unpacks its layers into the existing empty directory `rootDir`. */
export async function fetchOciImage(reference: string, rootDir: string, opts: FetchOciImageOptions = {}): Promise<FetchedOciImage> {
  const maxUnpackedBytes = opts.maxUnpackedBytes ?? defaultMaxImageBytes;
  if (!Number.isSafeInteger(maxUnpackedBytes) || maxUnpackedBytes < 0) {
    throw new RangeError(`maxUnpackedBytes must be a whole number of bytes, not ${maxUnpackedBytes}`);
  }
  const ref = parseOciReference(reference);
  const credentials = opts.credentialsFile === undefined ? undefined : await loadRegistryCredentials(opts.credentialsFile, ref.registry);
  const registry = new RegistryClient(ref, credentials);

  const top = await registry.manifest(ref.digest ?? ref.tag!);
  if (top === undefined) throw new Failure(`OCI image ${reference} does not exist.`);
  const image = await resolvePlatform(reference, registry, parseManifest(reference, top.json, top.contentType));

  if (image.config.mediaType !== "" && !imageConfigMediaTypes.has(image.config.mediaType)) {
    throw new Failure(`OCI image ${reference} is not a container image: its config is of media type "${image.config.mediaType}".`);
  }
  for (const layer of image.layers) checkLayerMediaType(reference, layer.digest, layer.mediaType);
  const configBlob = await registry.blob(image.config.digest, image.config.size, maxConfigBytes, "an image config");
  let configJson: unknown;
  try {
    configJson = JSON.parse(configBlob.toString("utf8"));
  } catch {
    throw new Failure(`OCI image ${reference} has an image config that is not valid JSON.`);
  }
  const config = parseImageConfig(reference, configJson);

  const root = await realpath(rootDir);
  const stack = new LayerStack(reference, root, maxUnpackedBytes);
  // A layer is downloaded whole and verified before any of it is unpacked.
  const work = await mkdtemp(join(tmpdir(), "microvms-oci-"));
  try {
    for (const [index, layer] of image.layers.entries()) {
      const path = join(work, `layer-${index}`);
      await registry.downloadBlob(layer.digest, layer.size, path, "a layer");
      await stack.apply(path);
      await rm(path);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return { sizeInBytes: await regularFileBytes(root), digest: top.digest, config };
}

/** Follows indexes to the linux/amd64 image manifest. */
async function resolvePlatform(reference: string, registry: RegistryClient, manifest: Manifest): Promise<Extract<Manifest, { kind: "image" }>> {
  for (let depth = 0; manifest.kind === "index"; depth++) {
    if (depth === maxIndexDepth) throw new Failure(`OCI image ${reference} has indexes nested more than ${maxIndexDepth} deep.`);
    const chosen = selectPlatform(reference, manifest.manifests);
    const fetched = await registry.manifest(chosen.digest);
    if (fetched === undefined) {
      throw new Failure(`OCI image ${reference} refers to the linux/amd64 manifest ${chosen.digest}, which the registry does not have.`);
    }
    manifest = parseManifest(reference, fetched.json, fetched.contentType);
  }
  return manifest;
}
