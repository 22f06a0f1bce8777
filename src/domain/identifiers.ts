import { randomBytes, randomUUID } from "node:crypto";
import { notFound, type ResourceType } from "./service-errors.js";
import type { Owner } from "../store/records.js";

/**
 * Identifiers in the service's own formats:
 *   image ARN         arn:aws:lambda:{region}:{account}:microvm-image:{name}
 *   managed image ARN arn:aws:lambda:{region}:aws:microvm-image:{name}
 *   MicroVM id        mvm- + 17 lowercase hex digits
 *   version           "1", "2", ... per image
 */

export function imageArn(owner: Owner, name: string): string {
  return `arn:aws:lambda:${owner.region}:${owner.accountId}:microvm-image:${name}`;
}

export function managedImageArn(region: string, name: string): string {
  return `arn:aws:lambda:${region}:aws:microvm-image:${name}`;
}

const IMAGE_ARN = /^arn:aws[a-zA-Z-]*:lambda:([a-z0-9-]+):(\d{12}|aws):microvm-image:([a-zA-Z0-9-_.]+)$/;

/** The parts of a MicroVM image ARN, or undefined when the text is not one. */
export function parseImageArn(text: string): { region: string; accountId: string; name: string } | undefined {
  const m = IMAGE_ARN.exec(text);
  return m ? { region: m[1]!, accountId: m[2]!, name: m[3]! } : undefined;
}

/**
 * The image name an `imageIdentifier` (ARN or name) designates for this owner.
 * An ARN of another account or region designates nothing the caller can see.
 */
export function imageNameOf(owner: Owner, identifier: string, resourceType: ResourceType = "MicrovmImage"): string {
  if (!identifier.startsWith("arn:")) return identifier;
  const arn = parseImageArn(identifier);
  if (!arn || arn.accountId !== owner.accountId || arn.region !== owner.region) throw notFound(resourceType, identifier);
  return arn.name;
}

/** A version number from its text ("1", "2", ...); anything else names no version. */
export function parseVersion(text: string): number | undefined {
  return /^[1-9]\d{0,8}$/.test(text) ? Number(text) : undefined;
}

export function newMicrovmId(): string {
  return "mvm-" + randomBytes(9).toString("hex").slice(0, 17);
}

export function newBuildId(): string {
  return randomUUID();
}

export function newImageId(): string {
  return randomUUID();
}
