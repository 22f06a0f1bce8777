import type { BuildState, MicrovmImageState, MicrovmImageVersionState } from "../api/generated/types.js";
import type {
  BuildRecord,
  ClientTokenRecord,
  ImageRecord,
  ManagedImageVersionRecord,
  MicrovmPhase,
  MicrovmRecord,
  Owner,
  Page,
  VersionRecord,
} from "./records.js";
import type { Row, SqlDriver, SqlExecutor, SqlValue } from "./sql-driver.js";
import type { Cursor, Store } from "./store.js";

/** JSON that keeps Dates (as {"$date": ms}), for stored responses that contain timestamps. */
function encodeJson(value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key, v: unknown) {
    const raw = this[key];
    return raw instanceof Date ? { $date: raw.getTime() } : v;
  });
}

function decodeJson<T>(text: string): T {
  return JSON.parse(text, (_key, v: unknown) =>
    v && typeof v === "object" && "$date" in v && Object.keys(v).length === 1 ? new Date((v as { $date: number }).$date) : v,
  ) as T;
}

const ms = (d: Date | undefined): number | null => (d ? d.getTime() : null);
const date = (v: SqlValue | undefined): Date | undefined => (v === null || v === undefined ? undefined : new Date(Number(v)));
const str = (v: SqlValue | undefined): string | undefined => (v === null || v === undefined ? undefined : String(v));

/** Builds `SET a = ?, b = ?` from a patch whose keys map to columns. */
function setClause(patch: Record<string, SqlValue | undefined>): { sql: string; params: SqlValue[] } {
  const entries = Object.entries(patch).filter(([, v]) => v !== undefined) as [string, SqlValue][];
  return { sql: entries.map(([column]) => `${column} = ?`).join(", "), params: entries.map(([, v]) => v) };
}

/** `(a, b) > (?, ?)` spelled out, since row-value comparison reads differently across engines. */
function afterClause(columns: string[], cursor: Cursor | undefined): { sql: string; params: SqlValue[] } {
  if (!cursor) return { sql: "", params: [] };
  const ors: string[] = [];
  const params: SqlValue[] = [];
  for (let i = 0; i < columns.length; i++) {
    const eqs = columns.slice(0, i).map((c) => `${c} = ?`);
    ors.push(`(${[...eqs, `${columns[i]} > ?`].join(" AND ")})`);
    params.push(...(cursor.slice(0, i + 1) as SqlValue[]));
  }
  return { sql: ` AND (${ors.join(" OR ")})`, params };
}

function page<T>(rows: Row[], limit: number, map: (row: Row) => T): Page<T> {
  return { items: rows.slice(0, limit).map(map), more: rows.length > limit };
}

const IMAGE_COLUMNS = `i.image_id, i.account_id, i.region, i.name, i.state, i.tags, i.created_at, i.updated_at, i.deleted_at,
  (SELECT MAX(v.version) FROM image_versions v WHERE v.image_id = i.image_id AND v.state = 'SUCCESSFUL' AND v.status = 'ACTIVE') AS latest_active,
  (SELECT MAX(v.version) FROM image_versions v WHERE v.image_id = i.image_id AND v.state = 'FAILED') AS latest_failed`;

function toImage(r: Row): ImageRecord {
  return {
    imageId: String(r.image_id),
    accountId: String(r.account_id),
    region: String(r.region),
    name: String(r.name),
    state: String(r.state) as ImageRecord["state"],
    tags: JSON.parse(String(r.tags)) as Record<string, string>,
    createdAt: date(r.created_at)!,
    updatedAt: date(r.updated_at)!,
    deletedAt: date(r.deleted_at),
    latestActiveVersion: r.latest_active === null ? undefined : Number(r.latest_active),
    latestFailedVersion: r.latest_failed === null ? undefined : Number(r.latest_failed),
  };
}

function toVersion(r: Row): VersionRecord {
  return {
    imageId: String(r.image_id),
    version: Number(r.version),
    state: String(r.state) as VersionRecord["state"],
    stateReason: str(r.state_reason),
    status: String(r.status) as VersionRecord["status"],
    config: decodeJson(String(r.config)),
    createdAt: date(r.created_at)!,
    updatedAt: date(r.updated_at)!,
  };
}

function toBuild(r: Row): BuildRecord {
  return {
    buildId: String(r.build_id),
    imageId: String(r.image_id),
    version: Number(r.version),
    architecture: String(r.architecture) as BuildRecord["architecture"],
    chipset: String(r.chipset) as BuildRecord["chipset"],
    chipsetGeneration: String(r.chipset_generation),
    buildState: String(r.build_state) as BuildRecord["buildState"],
    stateReason: str(r.state_reason),
    snapshotBuild: r.snapshot_build === null ? undefined : decodeJson(String(r.snapshot_build)),
    createdAt: date(r.created_at)!,
    updatedAt: date(r.updated_at)!,
  };
}

function toMicrovm(r: Row): MicrovmRecord {
  return {
    microvmId: String(r.microvm_id),
    accountId: String(r.account_id),
    region: String(r.region),
    imageId: String(r.image_id),
    imageName: String(r.image_name),
    imageVersion: Number(r.image_version),
    state: String(r.state) as MicrovmPhase,
    stateReason: str(r.state_reason),
    config: decodeJson(String(r.config)),
    createdAt: date(r.created_at)!,
    startedAt: date(r.started_at),
    terminatedAt: date(r.terminated_at),
    updatedAt: date(r.updated_at)!,
  };
}

const placeholders = (n: number) => Array.from({ length: n }, () => "?").join(", ");

/** `UPDATE table SET ... WHERE key AND state IN (from)`: whether the row moved. */
async function compareAndSet(
  db: SqlExecutor,
  table: string,
  set: { sql: string; params: SqlValue[] },
  key: string,
  keyParams: SqlValue[],
  from: string[],
  stateColumn = "state",
): Promise<boolean> {
  const changed = await db.execute(`UPDATE ${table} SET ${set.sql} WHERE ${key} AND ${stateColumn} IN (${placeholders(from.length)})`, [
    ...set.params,
    ...keyParams,
    ...from,
  ]);
  return changed === 1;
}

/** The one Store implementation: its SQL runs unchanged on SQLite and PostgreSQL. */
export class SqlStore implements Store {
  private constructor(
    private readonly db: SqlExecutor,
    private readonly driver: SqlDriver,
  ) {}

  static over(driver: SqlDriver): SqlStore {
    return new SqlStore(driver, driver);
  }

  transaction<T>(work: (store: Store) => Promise<T>): Promise<T> {
    // Already inside a transaction: join it rather than nest.
    if (this.db !== this.driver) return work(this);
    return this.driver.transaction((tx) => work(new SqlStore(tx, this.driver)));
  }

  close(): Promise<void> {
    return this.driver.close();
  }

  async setting(key: string, create: () => string): Promise<string> {
    await this.db.execute(`INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, [key, create()]);
    const rows = await this.db.query(`SELECT value FROM settings WHERE key = ?`, [key]);
    return String(rows[0]!.value);
  }

  async insertImage(image: ImageRecord): Promise<boolean> {
    const changed = await this.db.execute(
      `INSERT INTO images (image_id, account_id, region, name, state, tags, next_version, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)
       ON CONFLICT (account_id, region, name) WHERE deleted_at IS NULL DO NOTHING`,
      [image.imageId, image.accountId, image.region, image.name, image.state, JSON.stringify(image.tags), ms(image.createdAt), ms(image.updatedAt)],
    );
    return changed === 1;
  }

  async findImage(owner: Owner, name: string): Promise<ImageRecord | undefined> {
    const rows = await this.db.query(
      `SELECT ${IMAGE_COLUMNS} FROM images i WHERE i.account_id = ? AND i.region = ? AND i.name = ? AND i.deleted_at IS NULL`,
      [owner.accountId, owner.region, name],
    );
    return rows[0] && toImage(rows[0]);
  }

  async findImageById(imageId: string): Promise<ImageRecord | undefined> {
    const rows = await this.db.query(`SELECT ${IMAGE_COLUMNS} FROM images i WHERE i.image_id = ?`, [imageId]);
    return rows[0] && toImage(rows[0]);
  }

  async findDeletedImage(owner: Owner, name: string): Promise<ImageRecord | undefined> {
    const rows = await this.db.query(
      `SELECT ${IMAGE_COLUMNS} FROM images i WHERE i.account_id = ? AND i.region = ? AND i.name = ? AND i.deleted_at IS NOT NULL
       ORDER BY i.deleted_at DESC LIMIT 1`,
      [owner.accountId, owner.region, name],
    );
    return rows[0] && toImage(rows[0]);
  }

  async listImages(owner: Owner, query: { nameFilter?: string; after?: Cursor; limit: number }): Promise<Page<ImageRecord>> {
    const params: SqlValue[] = [owner.accountId, owner.region];
    let where = `i.account_id = ? AND i.region = ? AND i.deleted_at IS NULL`;
    if (query.nameFilter !== undefined) {
      where += ` AND ${this.db.containsSql("i.name")}`;
      params.push(query.nameFilter);
    }
    const after = afterClause(["i.created_at", "i.name"], query.after);
    const rows = await this.db.query(
      `SELECT ${IMAGE_COLUMNS} FROM images i WHERE ${where}${after.sql} ORDER BY i.created_at, i.name LIMIT ?`,
      [...params, ...after.params, query.limit + 1],
    );
    return page(rows, query.limit, toImage);
  }

  async updateImage(imageId: string, patch: { tags: Record<string, string>; updatedAt: Date }): Promise<void> {
    await this.db.execute(`UPDATE images SET tags = ?, updated_at = ? WHERE image_id = ?`, [JSON.stringify(patch.tags), ms(patch.updatedAt), imageId]);
  }

  async transitionImage(
    imageId: string,
    from: MicrovmImageState[],
    to: MicrovmImageState,
    patch: { deletedAt?: Date; updatedAt: Date },
  ): Promise<boolean> {
    const set = setClause({ state: to, deleted_at: patch.deletedAt && ms(patch.deletedAt), updated_at: ms(patch.updatedAt) });
    return compareAndSet(this.db, "images", set, "image_id = ?", [imageId], from);
  }

  async allocateVersion(imageId: string): Promise<number> {
    const rows = await this.db.query(
      `UPDATE images SET next_version = next_version + 1 WHERE image_id = ? RETURNING next_version - 1 AS version`,
      [imageId],
    );
    if (!rows[0]) throw new Error(`image ${imageId} does not exist`);
    return Number(rows[0].version);
  }

  async insertVersion(v: VersionRecord): Promise<void> {
    await this.db.execute(
      `INSERT INTO image_versions (image_id, version, state, state_reason, status, config, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      [v.imageId, v.version, v.state, v.stateReason ?? null, v.status, encodeJson(v.config), ms(v.createdAt), ms(v.updatedAt)],
    );
  }

  async findVersion(imageId: string, version: number): Promise<VersionRecord | undefined> {
    const rows = await this.db.query(`SELECT * FROM image_versions WHERE image_id = ? AND version = ?`, [imageId, version]);
    return rows[0] && toVersion(rows[0]);
  }

  async listVersions(imageId: string, query: { after?: Cursor; limit: number }): Promise<Page<VersionRecord>> {
    const after = afterClause(["version"], query.after);
    const rows = await this.db.query(
      `SELECT * FROM image_versions WHERE image_id = ? AND state <> 'DELETED'${after.sql} ORDER BY version LIMIT ?`,
      [imageId, ...after.params, query.limit + 1],
    );
    return page(rows, query.limit, toVersion);
  }

  async newestVersionInStates(imageId: string, states: VersionRecord["state"][]): Promise<VersionRecord | undefined> {
    const rows = await this.db.query(
      `SELECT * FROM image_versions WHERE image_id = ? AND status = 'ACTIVE' AND state IN (${placeholders(states.length)})
       ORDER BY version DESC LIMIT 1`,
      [imageId, ...states],
    );
    return rows[0] && toVersion(rows[0]);
  }

  async updateVersion(imageId: string, version: number, patch: Pick<VersionRecord, "status"> & { updatedAt: Date }): Promise<void> {
    await this.db.execute(`UPDATE image_versions SET status = ?, updated_at = ? WHERE image_id = ? AND version = ?`, [
      patch.status,
      ms(patch.updatedAt),
      imageId,
      version,
    ]);
  }

  async transitionVersion(
    imageId: string,
    version: number,
    from: MicrovmImageVersionState[],
    to: MicrovmImageVersionState,
    patch: { stateReason?: string | null; updatedAt: Date },
  ): Promise<boolean> {
    const set = setClause({ state: to, state_reason: patch.stateReason, updated_at: ms(patch.updatedAt) });
    return compareAndSet(this.db, "image_versions", set, "image_id = ? AND version = ?", [imageId, version], from);
  }

  async insertBuild(b: BuildRecord): Promise<void> {
    await this.db.execute(
      `INSERT INTO builds (build_id, image_id, version, architecture, chipset, chipset_generation, build_state, state_reason,
                           snapshot_build, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        b.buildId,
        b.imageId,
        b.version,
        b.architecture,
        b.chipset,
        b.chipsetGeneration,
        b.buildState,
        b.stateReason ?? null,
        b.snapshotBuild ? encodeJson(b.snapshotBuild) : null,
        ms(b.createdAt),
        ms(b.updatedAt),
      ],
    );
  }

  async findBuild(imageId: string, version: number, buildId: string): Promise<BuildRecord | undefined> {
    const rows = await this.db.query(`SELECT * FROM builds WHERE image_id = ? AND version = ? AND build_id = ?`, [
      imageId,
      version,
      buildId,
    ]);
    return rows[0] && toBuild(rows[0]);
  }

  async listBuilds(
    imageId: string,
    version: number,
    query: Partial<Pick<BuildRecord, "architecture" | "chipset" | "chipsetGeneration">> & { after?: Cursor; limit: number },
  ): Promise<Page<BuildRecord>> {
    let where = `image_id = ? AND version = ?`;
    const params: SqlValue[] = [imageId, version];
    for (const [column, value] of [
      ["architecture", query.architecture],
      ["chipset", query.chipset],
      ["chipset_generation", query.chipsetGeneration],
    ] as const) {
      if (value !== undefined) {
        where += ` AND ${column} = ?`;
        params.push(value);
      }
    }
    const after = afterClause(["created_at", "build_id"], query.after);
    const rows = await this.db.query(
      `SELECT * FROM builds WHERE ${where}${after.sql} ORDER BY created_at, build_id LIMIT ?`,
      [...params, ...after.params, query.limit + 1],
    );
    return page(rows, query.limit, toBuild);
  }

  async buildsInState(states: BuildRecord["buildState"][]): Promise<BuildRecord[]> {
    const rows = await this.db.query(
      `SELECT * FROM builds WHERE build_state IN (${placeholders(states.length)}) ORDER BY created_at, build_id`,
      states,
    );
    return rows.map(toBuild);
  }

  async findBuildInState(imageId: string, version: number | undefined, state: BuildRecord["buildState"]): Promise<BuildRecord | undefined> {
    const rows = await this.db.query(
      `SELECT * FROM builds WHERE image_id = ? AND build_state = ?${version === undefined ? "" : " AND version = ?"}
       ORDER BY created_at, build_id LIMIT 1`,
      version === undefined ? [imageId, state] : [imageId, state, version],
    );
    return rows[0] && toBuild(rows[0]);
  }

  async transitionBuild(
    buildId: string,
    from: BuildState[],
    to: BuildState,
    patch: { stateReason?: string | null; snapshotBuild?: BuildRecord["snapshotBuild"]; updatedAt: Date },
  ): Promise<boolean> {
    const set = setClause({
      build_state: to,
      state_reason: patch.stateReason,
      snapshot_build: patch.snapshotBuild && encodeJson(patch.snapshotBuild),
      updated_at: ms(patch.updatedAt),
    });
    return compareAndSet(this.db, "builds", set, "build_id = ?", [buildId], from, "build_state");
  }

  async insertMicrovm(m: MicrovmRecord): Promise<void> {
    await this.db.execute(
      `INSERT INTO microvms (microvm_id, account_id, region, image_id, image_name, image_version, state, state_reason, config,
                             created_at, started_at, terminated_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        m.microvmId,
        m.accountId,
        m.region,
        m.imageId,
        m.imageName,
        m.imageVersion,
        m.state,
        m.stateReason ?? null,
        encodeJson(m.config),
        ms(m.createdAt),
        ms(m.startedAt),
        ms(m.terminatedAt),
        ms(m.updatedAt),
      ],
    );
  }

  async findMicrovm(owner: Owner, microvmId: string): Promise<MicrovmRecord | undefined> {
    const rows = await this.db.query(`SELECT * FROM microvms WHERE account_id = ? AND region = ? AND microvm_id = ?`, [
      owner.accountId,
      owner.region,
      microvmId,
    ]);
    return rows[0] && toMicrovm(rows[0]);
  }

  async listMicrovms(
    owner: Owner,
    query: { imageId?: string; imageVersion?: number; after?: Cursor; limit: number },
  ): Promise<Page<MicrovmRecord>> {
    let where = `account_id = ? AND region = ?`;
    const params: SqlValue[] = [owner.accountId, owner.region];
    if (query.imageId !== undefined) {
      where += ` AND image_id = ?`;
      params.push(query.imageId);
    }
    if (query.imageVersion !== undefined) {
      where += ` AND image_version = ?`;
      params.push(query.imageVersion);
    }
    const after = afterClause(["created_at", "microvm_id"], query.after);
    const rows = await this.db.query(
      `SELECT * FROM microvms WHERE ${where}${after.sql} ORDER BY created_at, microvm_id LIMIT ?`,
      [...params, ...after.params, query.limit + 1],
    );
    return page(rows, query.limit, toMicrovm);
  }

  async microvmsInState(states: MicrovmPhase[]): Promise<MicrovmRecord[]> {
    const rows = await this.db.query(
      `SELECT * FROM microvms WHERE state IN (${placeholders(states.length)}) ORDER BY created_at, microvm_id`,
      states,
    );
    return rows.map(toMicrovm);
  }

  async countLiveMicrovms(filter: { owner: Owner } | { imageId: string; version?: number }): Promise<number> {
    let where: string;
    let params: SqlValue[];
    if ("owner" in filter) {
      where = `account_id = ? AND region = ?`;
      params = [filter.owner.accountId, filter.owner.region];
    } else {
      where = filter.version === undefined ? `image_id = ?` : `image_id = ? AND image_version = ?`;
      params = filter.version === undefined ? [filter.imageId] : [filter.imageId, filter.version];
    }
    const rows = await this.db.query(`SELECT COUNT(*) AS n FROM microvms WHERE ${where} AND state <> 'TERMINATED'`, params);
    return Number(rows[0]!.n);
  }

  async transitionMicrovm(
    microvmId: string,
    from: MicrovmPhase[],
    to: MicrovmPhase,
    patch: { stateReason?: string | null; startedAt?: Date; terminatedAt?: Date; updatedAt: Date },
  ): Promise<boolean> {
    const set = setClause({
      state: to,
      state_reason: patch.stateReason,
      started_at: patch.startedAt && ms(patch.startedAt),
      terminated_at: patch.terminatedAt && ms(patch.terminatedAt),
      updated_at: ms(patch.updatedAt),
    });
    return compareAndSet(this.db, "microvms", set, "microvm_id = ?", [microvmId], from);
  }

  async claimClientToken(record: ClientTokenRecord): Promise<ClientTokenRecord | undefined> {
    const inserted = await this.db.execute(
      `INSERT INTO client_tokens (account_id, region, operation, token, request_hash, response, created_at)
       VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (account_id, region, operation, token) DO NOTHING`,
      [record.accountId, record.region, record.operation, record.token, record.requestHash, ms(record.createdAt)],
    );
    if (inserted === 1) return undefined;
    const rows = await this.db.query(
      `SELECT * FROM client_tokens WHERE account_id = ? AND region = ? AND operation = ? AND token = ?`,
      [record.accountId, record.region, record.operation, record.token],
    );
    const r = rows[0]!;
    return {
      accountId: String(r.account_id),
      region: String(r.region),
      operation: String(r.operation),
      token: String(r.token),
      requestHash: String(r.request_hash),
      response: r.response === null ? undefined : decodeJson(String(r.response)),
      createdAt: date(r.created_at)!,
    };
  }

  async saveClientTokenResponse(owner: Owner, operation: string, token: string, response: unknown): Promise<void> {
    await this.db.execute(
      `UPDATE client_tokens SET response = ? WHERE account_id = ? AND region = ? AND operation = ? AND token = ?`,
      [encodeJson(response), owner.accountId, owner.region, operation, token],
    );
  }

  async pruneClientTokens(before: Date): Promise<number> {
    return this.db.execute(`DELETE FROM client_tokens WHERE created_at < ?`, [ms(before)]);
  }

  async recordManagedImageVersion(name: string, version: string, now: Date): Promise<void> {
    await this.db.execute(
      `INSERT INTO managed_image_versions (name, version, created_at, updated_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (name, version) DO NOTHING`,
      [name, version, ms(now), ms(now)],
    );
  }

  async managedImageVersionBuilt(name: string, version: string, builtAt: Date): Promise<void> {
    await this.db.execute(`UPDATE managed_image_versions SET updated_at = ? WHERE name = ? AND version = ? AND updated_at < ?`, [
      ms(builtAt),
      name,
      version,
      ms(builtAt),
    ]);
  }

  async managedImageVersions(): Promise<ManagedImageVersionRecord[]> {
    const rows = await this.db.query(`SELECT * FROM managed_image_versions ORDER BY name, version`, []);
    return rows.map((r) => ({ name: String(r.name), version: String(r.version), createdAt: date(r.created_at)!, updatedAt: date(r.updated_at)! }));
  }
}
