import Database from "better-sqlite3";
import type { Row, SqlDriver, SqlExecutor, SqlValue } from "./sql-driver.js";

/**
 * SQLite through better-sqlite3, in WAL mode. The binding is synchronous, so a
 * transaction that awaits between statements would let other requests' statements
 * run inside it: a lock serializes transactions and the statements outside them.
 */
export class SqliteDriver implements SqlDriver {
  readonly dialect = "sqlite" as const;
  private readonly db: Database.Database;
  private lock: Promise<void> = Promise.resolve();
  private readonly direct: SqlExecutor;

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.db.pragma("busy_timeout = 5000");
    this.direct = {
      query: async (sql, params = []) => this.run(sql, params).rows,
      execute: async (sql, params = []) => this.run(sql, params).changes,
      containsSql: (column) => this.containsSql(column),
    };
  }

  containsSql(column: string): string {
    return `instr(${column}, ?) > 0`;
  }

  private run(sql: string, params: SqlValue[]): { rows: Row[]; changes: number } {
    const statement = this.db.prepare(sql);
    if (statement.reader) return { rows: statement.all(...params) as Row[], changes: 0 };
    return { rows: [], changes: statement.run(...params).changes };
  }

  private async exclusive<T>(work: () => Promise<T>): Promise<T> {
    const previous = this.lock;
    let release!: () => void;
    this.lock = new Promise((resolve) => (release = resolve));
    await previous;
    try {
      return await work();
    } finally {
      release();
    }
  }

  query(sql: string, params: SqlValue[] = []): Promise<Row[]> {
    return this.exclusive(() => this.direct.query(sql, params));
  }

  execute(sql: string, params: SqlValue[] = []): Promise<number> {
    return this.exclusive(() => this.direct.execute(sql, params));
  }

  transaction<T>(work: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    return this.exclusive(async () => {
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const result = await work(this.direct);
        this.db.exec("COMMIT");
        return result;
      } catch (error) {
        this.db.exec("ROLLBACK");
        throw error;
      }
    });
  }

  async close(): Promise<void> {
    await this.exclusive(async () => this.db.close());
  }
}
