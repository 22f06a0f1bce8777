import { notFound } from "../domain/service-errors.js";
import type { ImageRecord, Owner, VersionRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import { imageNameOf, parseVersion } from "../domain/identifiers.js";

/** The caller's live image an `imageIdentifier` (ARN or name) designates, or ResourceNotFoundException. */
export async function resolveImage(store: Store, owner: Owner, identifier: string): Promise<ImageRecord> {
  const image = await store.findImage(owner, imageNameOf(owner, identifier));
  if (!image) throw notFound("MicrovmImage", identifier, `MicroVM image ${identifier} does not exist.`);
  return image;
}

/** A version of the image that is not deleted, or ResourceNotFoundException. */
export async function resolveVersion(store: Store, image: ImageRecord, versionText: string): Promise<VersionRecord> {
  const number = parseVersion(versionText);
  const version = number === undefined ? undefined : await store.findVersion(image.imageId, number);
  if (!version || version.state === "DELETED") {
    throw notFound(
      "MicrovmImageVersion",
      versionText,
      `Version ${versionText} of MicroVM image ${image.name} does not exist.`,
    );
  }
  return version;
}
