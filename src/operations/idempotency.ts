import { createHash } from "node:crypto";
import { ServiceError } from "../domain/service-errors.js";
import type { Store } from "../store/store.js";
import type { Owner } from "../store/records.js";

/** A stable hash of a request's input, key order aside, without its clientToken. */
export function requestHash(input: object): string {
  const canonical = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(canonical);
    if (value && typeof value === "object") {
      return Object.fromEntries(
        Object.keys(value)
          .filter((k) => k !== "clientToken")
          .sort()
          .map((k) => [k, canonical((value as Record<string, unknown>)[k])]),
      );
    }
    return value;
  };
  return createHash("sha256").update(JSON.stringify(canonical(input))).digest("hex");
}

/**
 * Runs `work` at most once per clientToken. The token is claimed in the same
 * transaction as the work, so concurrent retries cannot both create: the same
 * token with the same input returns the first result and does nothing more; with
 * different input it is a ConflictException.
 */
export async function oncePerClientToken<T>(
  store: Store,
  owner: Owner,
  operation: string,
  input: { clientToken?: string },
  now: Date,
  work: (store: Store) => Promise<T>,
): Promise<{ result: T; replayed: boolean }> {
  const token = input.clientToken;
  if (token === undefined) return { result: await store.transaction(work), replayed: false };
  const hash = requestHash(input);
  return store.transaction(async (tx) => {
    const previous = await tx.claimClientToken({ ...owner, operation, token, requestHash: hash, response: undefined, createdAt: now });
    if (previous) {
      if (previous.requestHash !== hash) {
        throw new ServiceError(
          "ConflictException",
          `The clientToken '${token}' was already used with different parameters for ${operation}.`,
        );
      }
      return { result: previous.response as T, replayed: true };
    }
    const result = await work(tx);
    await tx.saveClientTokenResponse(owner, operation, token, result);
    return { result, replayed: false };
  });
}
