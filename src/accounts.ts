import { existsSync, readFileSync } from "node:fs";

/**
 * Access keys and the accounts they belong to. Every access key belongs to one
 * account; resources of one account are invisible to another. Without a file the
 * default credentials are test/test for account 000000000000, like LocalStack's.
 *
 * File format (JSON):
 *   { "credentials": [ { "accessKeyId": "...", "secretAccessKey": "...", "accountId": "123456789012" } ] }
 */

export interface AccountCredential {
  accessKeyId: string;
  secretAccessKey: string;
  accountId: string;
}

export const DEFAULT_CREDENTIAL: AccountCredential = {
  accessKeyId: "test",
  secretAccessKey: "test",
  accountId: "000000000000",
};

export class Accounts {
  private readonly byKey = new Map<string, AccountCredential>();

  constructor(credentials: AccountCredential[]) {
    for (const c of credentials) this.byKey.set(c.accessKeyId, c);
  }

  lookup(accessKeyId: string): AccountCredential | undefined {
    return this.byKey.get(accessKeyId);
  }

  /** Reads the accounts file; a missing file means the default credentials only. */
  static load(path: string | undefined): Accounts {
    if (!path || !existsSync(path)) return new Accounts([DEFAULT_CREDENTIAL]);
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, "utf8"));
    } catch (error) {
      throw new Error(`accounts file ${path} is not valid JSON: ${(error as Error).message}`);
    }
    const list = (parsed as { credentials?: unknown }).credentials;
    if (!Array.isArray(list) || list.length === 0) {
      throw new Error(`accounts file ${path} must have a non-empty "credentials" list`);
    }
    const credentials = list.map((entry, i) => {
      const c = entry as Partial<AccountCredential>;
      if (typeof c.accessKeyId !== "string" || c.accessKeyId === "") {
        throw new Error(`accounts file ${path}: credentials[${i}].accessKeyId must be a non-empty string`);
      }
      if (typeof c.secretAccessKey !== "string" || c.secretAccessKey === "") {
        throw new Error(`accounts file ${path}: credentials[${i}].secretAccessKey must be a non-empty string`);
      }
      if (typeof c.accountId !== "string" || !/^\d{12}$/.test(c.accountId)) {
        throw new Error(`accounts file ${path}: credentials[${i}].accountId must be 12 digits`);
      }
      return { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, accountId: c.accountId };
    });
    return new Accounts(credentials);
  }
}
