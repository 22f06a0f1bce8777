import { notFound } from "../domain/service-errors.js";
import { findManagedImage, managedImages } from "../catalogue/catalogue.js";
import type { ManagedImageVersionRecord } from "../store/records.js";
import type { OperationHandlers, Services } from "./context.js";
import { managedImageArn, parseImageArn } from "../domain/identifiers.js";
import { DEFAULT_MAX_RESULTS, listScope } from "./pagination.js";

/** The catalogue of managed base images: ListManagedMicrovmImages, ListManagedMicrovmImageVersions. */

/** Records every catalogue version the first time this store sees it, which dates it. */
export async function recordManagedImages(services: Services): Promise<void> {
  for (const image of managedImages) {
    for (const version of image.versions) await services.store.recordManagedImageVersion(image.name, version, services.now());
  }
}

/** One page of a list that lives in memory, with the same tamper-evident tokens as stored lists. */
function pageOf<T>(services: Services, scope: string, all: T[], token: string | undefined, max: number | undefined) {
  const start = Number(services.paginator.decode(scope, token)?.[0] ?? 0);
  const limit = max ?? DEFAULT_MAX_RESULTS;
  const items = all.slice(start, start + limit);
  const next = start + limit < all.length ? services.paginator.encode(scope, [start + limit]) : undefined;
  return { items, nextToken: next };
}

export function managedImageHandlers(services: Services): Pick<
  OperationHandlers,
  "ListManagedMicrovmImages" | "ListManagedMicrovmImageVersions"
> {
  const { store } = services;
  /** The catalogue's versions of `name` as the store dates them (recorded at start-up by recordManagedImages). */
  const versionsOf = (recorded: ManagedImageVersionRecord[], name: string, versions: string[]) =>
    versions.map((version) => {
      const found = recorded.find((r) => r.name === name && r.version === version);
      if (!found) throw new Error(`managed image ${name} version ${version} was not recorded at start-up`);
      return found;
    });

  return {
    async ListManagedMicrovmImages(input, { owner }) {
      const recorded = await store.managedImageVersions();
      const all = managedImages.map((image) => {
        const versions = versionsOf(recorded, image.name, image.versions);
        return {
          createdAt: versions[0]!.createdAt,
          imageArn: managedImageArn(owner.region, image.name),
          updatedAt: new Date(Math.max(...versions.map((v) => v.updatedAt.getTime()))),
        };
      });
      return pageOf(services, listScope("ListManagedMicrovmImages", owner.region), all, input.nextToken, input.maxResults);
    },

    async ListManagedMicrovmImageVersions(input, { owner }) {
      const parsed = parseImageArn(input.imageIdentifier);
      const name = parsed ? (parsed.accountId === "aws" && parsed.region === owner.region ? parsed.name : "") : input.imageIdentifier;
      const image = findManagedImage(name);
      if (!image) {
        throw notFound("ManagedMicrovmImage", input.imageIdentifier, `Managed MicroVM image ${input.imageIdentifier} does not exist.`);
      }
      const all = versionsOf(await store.managedImageVersions(), image.name, image.versions).map((v) => ({
        createdAt: v.createdAt,
        imageArn: managedImageArn(owner.region, image.name),
        imageVersion: v.version,
        updatedAt: v.updatedAt,
      }));
      const scope = listScope("ListManagedMicrovmImageVersions", owner.region, image.name);
      return pageOf(services, scope, all, input.nextToken, input.maxResults);
    },
  };
}
