import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { migrate } from "./migrations.js";
import { PostgresDriver } from "./postgres-driver.js";
import type { SqlDriver } from "./sql-driver.js";
import { SqliteDriver } from "./sqlite-driver.js";
import { SqlStore } from "./sql-store.js";
import type { Store } from "./store.js";

/** Opens the store (PostgreSQL when a URL is given, else SQLite in the data directory) and migrates it. */
export async function openStore(options: { dataDir: string; databaseUrl?: string }): Promise<Store> {
  let driver: SqlDriver;
  if (options.databaseUrl) {
    driver = await PostgresDriver.connect(options.databaseUrl);
  } else {
    mkdirSync(options.dataDir, { recursive: true });
    driver = new SqliteDriver(join(options.dataDir, "microvms.db"));
  }
  await migrate(driver);
  return SqlStore.over(driver);
}
