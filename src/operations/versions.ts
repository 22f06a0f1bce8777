import type { MicrovmImageVersionSummary } from "../api/generated/types.js";
import { conflict, notFound } from "../domain/service-errors.js";
import type { ImageRecord, VersionRecord } from "../store/records.js";
import { ImageLifecycle } from "../lifecycle/image-states.js";
import { versionCursor } from "../store/store.js";
import type { OperationHandlers, Services } from "./context.js";
import { imageArn, parseVersion } from "../domain/identifiers.js";
import { refuseWhileBuilding } from "./images.js";
import { DEFAULT_MAX_RESULTS, listResponse, listScope } from "./pagination.js";
import { resolveImage, resolveVersion } from "./resolve.js";

/**
 * Versions of an image: GetMicrovmImageVersion, ListMicrovmImageVersions,
 * UpdateMicrovmImageVersion (ACTIVE/INACTIVE), DeleteMicrovmImageVersion.
 */

export function versionDetail(image: ImageRecord, version: VersionRecord): MicrovmImageVersionSummary {
  return {
    ...version.config,
    createdAt: version.createdAt,
    imageArn: imageArn(image, image.name),
    imageVersion: String(version.version),
    state: version.state,
    stateReason: version.stateReason,
    status: version.status,
    tags: image.tags,
    updatedAt: version.updatedAt,
  };
}

export function versionHandlers(services: Services): Pick<
  OperationHandlers,
  "GetMicrovmImageVersion" | "ListMicrovmImageVersions" | "UpdateMicrovmImageVersion" | "DeleteMicrovmImageVersion"
> {
  const { store, paginator } = services;
  return {
    async GetMicrovmImageVersion(input, { owner }) {
      const image = await resolveImage(store, owner, input.imageIdentifier);
      return versionDetail(image, await resolveVersion(store, image, input.imageVersion));
    },

    async ListMicrovmImageVersions(input, { owner }) {
      const image = await resolveImage(store, owner, input.imageIdentifier);
      const scope = listScope("ListMicrovmImageVersions", image.imageId);
      const page = await store.listVersions(image.imageId, {
        after: paginator.decode(scope, input.nextToken),
        limit: input.maxResults ?? DEFAULT_MAX_RESULTS,
      });
      return listResponse(paginator, scope, page, versionCursor, (v) => versionDetail(image, v));
    },

    async UpdateMicrovmImageVersion(input, { owner }) {
      const now = services.now();
      return store.transaction(async (tx) => {
        const image = await resolveImage(tx, owner, input.imageIdentifier);
        const version = await resolveVersion(tx, image, input.imageVersion);
        if (input.status === "ACTIVE" && version.state === "FAILED") {
          throw conflict(
            "MicrovmImageVersion",
            input.imageVersion,
            `Version ${version.version} of MicroVM image ${image.name} is FAILED and cannot be made ACTIVE.`,
          );
        }
        await tx.updateVersion(image.imageId, version.version, { status: input.status, updatedAt: now });
        return versionDetail(image, { ...version, status: input.status, updatedAt: now });
      });
    },

    async DeleteMicrovmImageVersion(input, { owner }) {
      const now = services.now();
      let freed: { imageId: string; versions: number[] } | undefined;
      const result = await store.transaction(async (tx) => {
        const image = await resolveImage(tx, owner, input.imageIdentifier);
        const number = parseVersion(input.imageVersion);
        const version = number === undefined ? undefined : await tx.findVersion(image.imageId, number);
        if (!version) {
          throw notFound(
            "MicrovmImageVersion",
            input.imageVersion,
            `Version ${input.imageVersion} of MicroVM image ${image.name} does not exist.`,
          );
        }
        const done = { imageIdentifier: input.imageIdentifier, imageVersion: input.imageVersion, state: "DELETED" as const };
        // Deleting a version that was already deleted succeeds, as the spec says.
        if (version.state === "DELETED") return done;
        const live = await tx.countLiveMicrovms({ imageId: image.imageId, version: version.version });
        if (live > 0) {
          throw conflict(
            "MicrovmImageVersion",
            input.imageVersion,
            `Version ${version.version} of MicroVM image ${image.name} is used by ${live} MicroVM(s) that are not ` +
              `terminated; terminate them first.`,
          );
        }
        await refuseWhileBuilding(tx, image, version.version);
        await new ImageLifecycle(tx).version(version, "delete", { updatedAt: now });
        freed = { imageId: image.imageId, versions: [version.version] };
        return done;
      });
      // Recorded first, then the files go: a crash in between leaves files, never a version without them.
      if (freed) services.engine.versionsDeleted(freed.imageId, freed.versions);
      return result;
    },
  };
}
