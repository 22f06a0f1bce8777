import type {
  CreateMicrovmImageRequest,
  CreateMicrovmImageResponse,
  CpuConfiguration,
  GetMicrovmImageResponse,
  MicrovmImageSummary,
  UpdateMicrovmImageRequest,
} from "../api/generated/types.js";
import { conflict, notFound, validation } from "../domain/service-errors.js";
import { forbidden, ImageLifecycle, imageStates } from "../lifecycle/image-states.js";
import { findManagedImage } from "../catalogue/catalogue.js";
import type { HostPlatform } from "../platform.js";
import type { BuildRecord, ImageRecord, Owner, VersionConfig, VersionRecord } from "../store/records.js";
import { imageCursor, type Store } from "../store/store.js";
import type { OperationHandlers, Services } from "./context.js";
import { imageArn, imageNameOf, managedImageArn, newBuildId, newImageId, parseImageArn } from "../domain/identifiers.js";
import { oncePerClientToken } from "./idempotency.js";
import { DEFAULT_MAX_RESULTS, listResponse, listScope } from "./pagination.js";
import { resolveImage } from "./resolve.js";
import { checkTags } from "./tags.js";

/**
 * MicroVM images: CreateMicrovmImage, GetMicrovmImage, ListMicrovmImages,
 * UpdateMicrovmImage, DeleteMicrovmImage.
 *
 *   Create/Update ─► check the configuration ─► (one transaction, once per clientToken)
 *                    image CREATING/UPDATING + version N PENDING + one build per CPU
 *                    configuration PENDING ─► commit ─► engine.startBuild for each
 */

export const EGRESS_CONNECTORS = ["INTERNET_EGRESS"] as const;
export const INGRESS_CONNECTORS = ["SHELL_INGRESS"] as const;
const MIN_MEMORY_MIB = 128;
const MAX_MEMORY_MIB = 10240;

/** The code artifact sources a build can fetch: S3, a local file or directory, an OCI image. */
const S3_URI = /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/.+$/;
const FILE_URI = /^file:\/\/\/.+$/;
const OCI_REFERENCE =
  /^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+|[a-z0-9-]+:\d+)(:\d+)?(\/[a-z0-9]+([._-][a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$/;

function checkCodeArtifactUri(uri: string): void {
  if (S3_URI.test(uri) || FILE_URI.test(uri) || OCI_REFERENCE.test(uri)) return;
  throw validation(
    `Value '${uri}' at 'codeArtifact.uri' failed to satisfy constraint: Member must be an S3 URI ` +
      `(s3://bucket/key), a file URI (file:///path to a zip, a tar or a directory), or an OCI image ` +
      `reference (registry/repository:tag or @sha256:digest).`,
  );
}

/** The managed base image and version a configuration builds on, or the error a user should see. */
function checkBaseImage(owner: Owner, arn: string, version: string | undefined): { name: string; version: string } {
  const parsed = parseImageArn(arn);
  if (!parsed || parsed.accountId !== "aws") {
    throw validation(
      `Value '${arn}' at 'baseImageArn' failed to satisfy constraint: Member must be the ARN of a managed ` +
        `MicroVM image, such as ${managedImageArn(owner.region, "busybox")} (see ListManagedMicrovmImages).`,
    );
  }
  const base = parsed.region === owner.region ? findManagedImage(parsed.name) : undefined;
  if (!base) throw notFound("ManagedMicrovmImage", arn, `Managed MicroVM image ${arn} does not exist.`);
  const chosen = version ?? base.versions[base.versions.length - 1]!;
  if (!base.versions.includes(chosen)) {
    throw notFound(
      "ManagedMicrovmImageVersion",
      chosen,
      `Version ${chosen} of managed MicroVM image ${base.name} does not exist (versions: ${base.versions.join(", ")}).`,
    );
  }
  return { name: base.name, version: chosen };
}

export function checkConnectors(field: string, values: string[] | undefined, known: readonly string[]): void {
  const seen = new Set<string>();
  (values ?? []).forEach((value, i) => {
    if (!known.includes(value)) {
      throw validation(
        `Value '${value}' at '${field}[${i}]' failed to satisfy constraint: Member must be one of [${known.join(", ")}].`,
      );
    }
    if (seen.has(value)) throw validation(`Value '${value}' at '${field}' is given more than once.`);
    seen.add(value);
  });
}

/** Checks the rules of an image configuration the model cannot express, and fills its defaults. */
function versionConfigOf(
  services: Services,
  owner: Owner,
  input: CreateMicrovmImageRequest | UpdateMicrovmImageRequest,
): VersionConfig {
  const base = checkBaseImage(owner, input.baseImageArn, input.baseImageVersion);
  checkCodeArtifactUri(input.codeArtifact.uri!);
  checkConnectors("egressNetworkConnectors", input.egressNetworkConnectors, EGRESS_CONNECTORS);
  const cpuConfigurations: CpuConfiguration[] = input.cpuConfigurations?.length
    ? input.cpuConfigurations
    : [{ architecture: services.platform.architecture }];
  const architectures = cpuConfigurations.map((c) => c.architecture);
  if (new Set(architectures).size !== architectures.length) {
    throw validation(`Value at 'cpuConfigurations' failed to satisfy constraint: Member must not repeat an architecture.`);
  }
  input.resources?.forEach((r, i) => {
    if (r.minimumMemoryInMiB < MIN_MEMORY_MIB || r.minimumMemoryInMiB > MAX_MEMORY_MIB) {
      throw validation(
        `Value '${r.minimumMemoryInMiB}' at 'resources[${i}].minimumMemoryInMiB' failed to satisfy constraint: ` +
          `Member must have value between ${MIN_MEMORY_MIB} and ${MAX_MEMORY_MIB}.`,
      );
    }
  });
  return {
    additionalOsCapabilities: input.additionalOsCapabilities,
    baseImageArn: input.baseImageArn,
    baseImageVersion: base.version,
    buildRoleArn: input.buildRoleArn,
    codeArtifact: input.codeArtifact,
    cpuConfigurations,
    description: input.description,
    egressNetworkConnectors: input.egressNetworkConnectors,
    environmentVariables: input.environmentVariables,
    hooks: input.hooks,
    logging: input.logging,
    resources: input.resources,
  };
}

/** The chipset a build for `architecture` targets: this host's, or the usual one of a foreign architecture. */
function buildTarget(platform: HostPlatform, architecture: CpuConfiguration["architecture"]): Omit<HostPlatform, "architecture"> {
  if (architecture === platform.architecture) return { chipset: platform.chipset, chipsetGeneration: platform.chipsetGeneration };
  return architecture === "ARM_64"
    ? { chipset: "GRAVITON", chipsetGeneration: "2" }
    : { chipset: "INTEL", chipsetGeneration: "x86-64-v2" };
}

/** Records the image's next version and its builds, all PENDING, inside the caller's transaction. */
async function addVersion(
  store: Store,
  services: Services,
  image: ImageRecord,
  config: VersionConfig,
  now: Date,
): Promise<{ version: VersionRecord; builds: BuildRecord[] }> {
  const number = await store.allocateVersion(image.imageId);
  const version: VersionRecord = {
    imageId: image.imageId,
    version: number,
    state: "PENDING",
    status: "ACTIVE",
    config,
    createdAt: now,
    updatedAt: now,
  };
  await store.insertVersion(version);
  const builds = (config.cpuConfigurations ?? []).map(
    (cpu): BuildRecord => ({
      buildId: newBuildId(),
      imageId: image.imageId,
      version: number,
      architecture: cpu.architecture,
      ...buildTarget(services.platform, cpu.architecture),
      buildState: "PENDING",
      createdAt: now,
      updatedAt: now,
    }),
  );
  for (const build of builds) await store.insertBuild(build);
  return { version, builds };
}

/** An image as GetMicrovmImage shows it (list summaries are the subset their shape declares). */
function imageDetail(image: ImageRecord): GetMicrovmImageResponse & MicrovmImageSummary {
  return {
    createdAt: image.createdAt,
    imageArn: imageArn(image, image.name),
    latestActiveImageVersion: image.latestActiveVersion?.toString(),
    latestFailedImageVersion: image.latestFailedVersion?.toString(),
    name: image.name,
    state: image.state,
    tags: image.tags,
    updatedAt: image.updatedAt,
  };
}

/** The response of CreateMicrovmImage and UpdateMicrovmImage: the image with the version just started. */
function imageWithVersion(image: ImageRecord, version: VersionRecord): CreateMicrovmImageResponse {
  return { ...version.config, ...imageDetail(image), imageVersion: String(version.version) };
}

export function imageHandlers(services: Services): Pick<
  OperationHandlers,
  "CreateMicrovmImage" | "GetMicrovmImage" | "ListMicrovmImages" | "UpdateMicrovmImage" | "DeleteMicrovmImage"
> {
  const { store, engine, paginator } = services;

  return {
    async CreateMicrovmImage(input, { owner }) {
      const now = services.now();
      const config = versionConfigOf(services, owner, input);
      const tags = input.tags ?? {};
      checkTags(tags, "tags", "ValidationException");
      let builds: BuildRecord[] = [];
      const { result } = await oncePerClientToken(store, owner, "CreateMicrovmImage", input, now, async (tx) => {
        const image: ImageRecord = { ...owner, imageId: newImageId(), name: input.name, state: "CREATING", tags, createdAt: now, updatedAt: now };
        if (!(await tx.insertImage(image))) {
          throw conflict("MicrovmImage", input.name, `A MicroVM image named '${input.name}' already exists.`);
        }
        const added = await addVersion(tx, services, image, config, now);
        builds = added.builds;
        return imageWithVersion(image, added.version);
      });
      for (const build of builds) engine.startBuild(build);
      return result;
    },

    async UpdateMicrovmImage(input, { owner }) {
      const now = services.now();
      const config = versionConfigOf(services, owner, input);
      let builds: BuildRecord[] = [];
      const { result } = await oncePerClientToken(store, owner, "UpdateMicrovmImage", input, now, async (tx) => {
        const image = await resolveImage(tx, owner, input.imageIdentifier);
        const added = await addVersion(tx, services, image, config, now);
        if ((await new ImageLifecycle(tx).image(image, "update", { updatedAt: now })) === "forbidden") {
          forbidden(imageStates, "update", { type: "MicrovmImage", id: image.name, what: `MicroVM image ${image.name}`, state: image.state }, "UpdateMicrovmImage");
        }
        builds = added.builds;
        return imageWithVersion({ ...image, state: "UPDATING", updatedAt: now }, added.version);
      });
      for (const build of builds) engine.startBuild(build);
      return result;
    },

    async GetMicrovmImage(input, { owner }) {
      return imageDetail(await resolveImage(store, owner, input.imageIdentifier));
    },

    async ListMicrovmImages(input, { owner }) {
      const scope = listScope("ListMicrovmImages", owner.accountId, owner.region, input.nameFilter);
      const page = await store.listImages(owner, {
        nameFilter: input.nameFilter,
        after: paginator.decode(scope, input.nextToken),
        limit: input.maxResults ?? DEFAULT_MAX_RESULTS,
      });
      return listResponse(paginator, scope, page, imageCursor, imageDetail);
    },

    async DeleteMicrovmImage(input, { owner }) {
      const now = services.now();
      let freed: { imageId: string; versions: number[] } | undefined;
      const result = await store.transaction(async (tx) => {
        const name = imageNameOf(owner, input.imageIdentifier);
        const image = await tx.findImage(owner, name);
        if (!image) {
          // Deleting an image that was already deleted succeeds, as the spec says.
          if (await tx.findDeletedImage(owner, name)) return { imageIdentifier: input.imageIdentifier, state: "DELETED" as const };
          throw notFound("MicrovmImage", input.imageIdentifier, `MicroVM image ${input.imageIdentifier} does not exist.`);
        }
        const live = await tx.countLiveMicrovms({ imageId: image.imageId });
        if (live > 0) {
          throw conflict(
            "MicrovmImage",
            input.imageIdentifier,
            `MicroVM image ${image.name} is used by ${live} MicroVM(s) that are not terminated; terminate them first.`,
          );
        }
        await refuseWhileBuilding(tx, image, undefined);
        freed = { imageId: image.imageId, versions: await markVersionsDeleted(tx, image, now) };
        await new ImageLifecycle(tx).image(image, "delete", { deletedAt: now, updatedAt: now });
        return { imageIdentifier: input.imageIdentifier, state: "DELETED" as const };
      });
      if (freed) engine.versionsDeleted(freed.imageId, freed.versions);
      return result;
    },
  };
}

/** A build in progress holds a VM; deleting under it would leak it, so the caller waits for it to end. */
export async function refuseWhileBuilding(store: Store, image: ImageRecord, version: number | undefined): Promise<void> {
  const building = await store.findBuildInState(image.imageId, version, "IN_PROGRESS");
  if (building) {
    const which = version === undefined ? `MicroVM image ${image.name}` : `Version ${version} of MicroVM image ${image.name}`;
    throw conflict(
      version === undefined ? "MicrovmImage" : "MicrovmImageVersion",
      version === undefined ? image.name : String(version),
      `${which} has a build in progress (${building.buildId}); retry when it has finished.`,
    );
  }
}

/** Marks every version of the image DELETED; returns their numbers. */
async function markVersionsDeleted(store: Store, image: ImageRecord, now: Date): Promise<number[]> {
  const deleted: number[] = [];
  let after: (string | number)[] | undefined;
  for (;;) {
    const page = await store.listVersions(image.imageId, { after, limit: 100 });
    for (const v of page.items) {
      await new ImageLifecycle(store).version(v, "delete", { updatedAt: now });
      deleted.push(v.version);
    }
    const last = page.items[page.items.length - 1];
    if (!page.more || !last) return deleted;
    after = [last.version];
  }
}
