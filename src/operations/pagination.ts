import { createHmac, timingSafeEqual } from "node:crypto";
import { validation } from "../domain/service-errors.js";
import type { Page } from "../store/records.js";
import type { Cursor } from "../store/store.js";

/**
 * Opaque, tamper-evident `nextToken`s. A token carries the cursor of the last item
 * returned and is bound by an HMAC to the list it came from (operation, owner and
 * filters), so a token edited, forged, or replayed against another list is a
 * ValidationException rather than a wrong page.
 */
export const DEFAULT_MAX_RESULTS = 50;

export class Paginator {
  constructor(private readonly key: Buffer) {}

  private mac(scope: string, payload: string): Buffer {
    return createHmac("sha256", this.key).update(scope).update("\0").update(payload).digest();
  }

  encode(scope: string, cursor: Cursor): string {
    const payload = Buffer.from(JSON.stringify(cursor)).toString("base64url");
    return `${payload}.${this.mac(scope, payload).toString("base64url")}`;
  }

  /** The cursor in `token`, or undefined for no token. */
  decode(scope: string, token: string | undefined): Cursor | undefined {
    if (token === undefined) return undefined;
    const invalid = () => validation(`The nextToken '${token.slice(0, 64)}' is not valid for this request.`);
    const [payload, signature, extra] = token.split(".");
    if (!payload || !signature || extra !== undefined) throw invalid();
    const expected = this.mac(scope, payload);
    const given = Buffer.from(signature, "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid();
    const cursor: unknown = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
    if (!Array.isArray(cursor) || !cursor.every((v) => typeof v === "string" || typeof v === "number")) throw invalid();
    return cursor as Cursor;
  }
}

/** A list operation's response: the page's items and, when more follow, the token for the next page. */
export function listResponse<T, I>(
  paginator: Paginator,
  scope: string,
  page: Page<T>,
  cursorOf: (item: T) => Cursor,
  render: (item: T) => I,
): { items: I[]; nextToken?: string } {
  const last = page.items[page.items.length - 1];
  return {
    items: page.items.map(render),
    nextToken: page.more && last !== undefined ? paginator.encode(scope, cursorOf(last)) : undefined,
  };
}

/** The scope a token is bound to: the list's operation, owner and every filter. */
export function listScope(operation: string, ...parts: (string | number | undefined)[]): string {
  return JSON.stringify([operation, ...parts.map((p) => (p === undefined ? null : p))]);
}
