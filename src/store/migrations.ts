import type { SqlDriver } from "./sql-driver.js";

/**
 * Schema migrations, applied in order and recorded in schema_migrations. Each is
 * written in the SQL that SQLite and PostgreSQL share. Never edit a released
 * migration: add the next one.
 *
 * Timestamps are epoch milliseconds (BIGINT); structured configuration is JSON text.
 */
export const migrations: { version: number; statements: string[] }[] = [
  {
    version: 1,
    statements: [
      `CREATE TABLE settings (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
       )`,
      `CREATE TABLE images (
         image_id TEXT PRIMARY KEY,
         account_id TEXT NOT NULL,
         region TEXT NOT NULL,
         name TEXT NOT NULL,
         state TEXT NOT NULL,
         tags TEXT NOT NULL,
         next_version INTEGER NOT NULL,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL,
         deleted_at BIGINT
       )`,
      // Names are unique among an account's live images; a deleted image's name can be reused.
      `CREATE UNIQUE INDEX images_live_name ON images (account_id, region, name) WHERE deleted_at IS NULL`,
      `CREATE INDEX images_by_created ON images (account_id, region, created_at, name)`,
      `CREATE TABLE image_versions (
         image_id TEXT NOT NULL REFERENCES images (image_id),
         version INTEGER NOT NULL,
         state TEXT NOT NULL,
         state_reason TEXT,
         status TEXT NOT NULL,
         config TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL,
         PRIMARY KEY (image_id, version)
       )`,
      `CREATE TABLE builds (
         build_id TEXT PRIMARY KEY,
         image_id TEXT NOT NULL,
         version INTEGER NOT NULL,
         architecture TEXT NOT NULL,
         chipset TEXT NOT NULL,
         chipset_generation TEXT NOT NULL,
         build_state TEXT NOT NULL,
         state_reason TEXT,
         snapshot_build TEXT,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL,
         FOREIGN KEY (image_id, version) REFERENCES image_versions (image_id, version)
       )`,
      `CREATE INDEX builds_by_version ON builds (image_id, version, created_at, build_id)`,
      `CREATE INDEX builds_by_state ON builds (build_state)`,
      `CREATE TABLE microvms (
         microvm_id TEXT PRIMARY KEY,
         account_id TEXT NOT NULL,
         region TEXT NOT NULL,
         image_id TEXT NOT NULL REFERENCES images (image_id),
         image_name TEXT NOT NULL,
         image_version INTEGER NOT NULL,
         state TEXT NOT NULL,
         state_reason TEXT,
         config TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         started_at BIGINT,
         terminated_at BIGINT,
         updated_at BIGINT NOT NULL
       )`,
      `CREATE INDEX microvms_by_created ON microvms (account_id, region, created_at, microvm_id)`,
      `CREATE INDEX microvms_by_image ON microvms (image_id, image_version, state)`,
      `CREATE INDEX microvms_by_state ON microvms (state)`,
      `CREATE TABLE client_tokens (
         account_id TEXT NOT NULL,
         region TEXT NOT NULL,
         operation TEXT NOT NULL,
         token TEXT NOT NULL,
         request_hash TEXT NOT NULL,
         response TEXT,
         created_at BIGINT NOT NULL,
         PRIMARY KEY (account_id, region, operation, token)
       )`,
      `CREATE TABLE managed_image_versions (
         name TEXT NOT NULL,
         version TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL,
         PRIMARY KEY (name, version)
       )`,
    ],
  },
  {
    version: 2,
    statements: [
      // PENDING is kept as STARTING or RESUMING (src/lifecycle/microvm-states.ts). A MicroVM caught
      // resuming by this upgrade is started afresh from its image's snapshot.
      `UPDATE microvms SET state = 'STARTING' WHERE state = 'PENDING'`,
    ],
  },
];

export async function migrate(driver: SqlDriver): Promise<void> {
  await driver.execute(
    `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`,
  );
  for (const migration of migrations) {
    await driver.transaction(async (tx) => {
      // Two servers starting on one database apply each migration once: SQLite's
      // BEGIN IMMEDIATE already excludes other writers; PostgreSQL needs the lock.
      if (driver.dialect === "postgres") await tx.execute(`LOCK TABLE schema_migrations IN EXCLUSIVE MODE`);
      const applied = await tx.query(`SELECT version FROM schema_migrations WHERE version = ?`, [migration.version]);
      if (applied.length > 0) return;
      for (const statement of migration.statements) await tx.execute(statement);
      await tx.execute(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, [migration.version, Date.now()]);
    });
  }
}
