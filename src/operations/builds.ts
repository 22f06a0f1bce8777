import type { MicrovmImageBuildSummary } from "../api/generated/types.js";
import { notFound } from "../domain/service-errors.js";
import type { BuildRecord, ImageRecord } from "../store/records.js";
import { buildCursor } from "../store/store.js";
import type { OperationHandlers, Services } from "./context.js";
import { imageArn } from "../domain/identifiers.js";
import { DEFAULT_MAX_RESULTS, listResponse, listScope } from "./pagination.js";
import { resolveImage, resolveVersion } from "./resolve.js";

/** Builds of a version, one per CPU configuration: GetMicrovmImageBuild, ListMicrovmImageBuilds. */

function buildSummary(image: ImageRecord, build: BuildRecord): MicrovmImageBuildSummary {
  return {
    architecture: build.architecture,
    buildId: build.buildId,
    buildState: build.buildState,
    chipset: build.chipset,
    chipsetGeneration: build.chipsetGeneration,
    createdAt: build.createdAt,
    imageArn: imageArn(image, image.name),
    imageVersion: String(build.version),
    stateReason: build.stateReason,
  };
}

export function buildHandlers(services: Services): Pick<OperationHandlers, "GetMicrovmImageBuild" | "ListMicrovmImageBuilds"> {
  const { store, paginator } = services;
  return {
    async GetMicrovmImageBuild(input, { owner }) {
      const image = await resolveImage(store, owner, input.imageIdentifier);
      const version = await resolveVersion(store, image, input.imageVersion);
      const build = await store.findBuild(image.imageId, version.version, input.buildId);
      if (!build) {
        throw notFound(
          "MicrovmImageBuild",
          input.buildId,
          `Build ${input.buildId} of version ${version.version} of MicroVM image ${image.name} does not exist.`,
        );
      }
      return { ...buildSummary(image, build), snapshotBuild: build.snapshotBuild };
    },

    async ListMicrovmImageBuilds(input, { owner }) {
      const image = await resolveImage(store, owner, input.imageIdentifier);
      const version = await resolveVersion(store, image, input.imageVersion);
      const filters = { architecture: input.architecture, chipset: input.chipset, chipsetGeneration: input.chipsetGeneration };
      const scope = listScope(
        "ListMicrovmImageBuilds",
        image.imageId,
        version.version,
        filters.architecture,
        filters.chipset,
        filters.chipsetGeneration,
      );
      const page = await store.listBuilds(image.imageId, version.version, {
        ...filters,
        after: paginator.decode(scope, input.nextToken),
        limit: input.maxResults ?? DEFAULT_MAX_RESULTS,
      });
      return listResponse(paginator, scope, page, buildCursor, (b) => buildSummary(image, b));
    },
  };
}
