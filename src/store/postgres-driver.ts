import pg from "pg";
import type { Row, SqlDriver, SqlExecutor, SqlValue } from "./sql-driver.js";

/** Rewrites `?` placeholders as PostgreSQL's `$1, $2, ...` (our SQL has no `?` inside literals). */
function numbered(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

const INT8_OID = 20;
/** BIGINT columns hold epoch milliseconds and counters, all well within 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

class PostgresExecutor implements SqlExecutor {
  constructor(private readonly client: pg.Pool | pg.PoolClient) {}

  async query(sql: string, params: SqlValue[] = []): Promise<Row[]> {
    return (await this.client.query(numbered(sql), params)).rows as Row[];
  }

  async execute(sql: string, params: SqlValue[] = []): Promise<number> {
    return (await this.client.query(numbered(sql), params)).rowCount ?? 0;
  }

  containsSql(column: string): string {
    return `strpos(${column}, ?) > 0`;
  }
}

/** PostgreSQL through a `pg` pool; each transaction holds one pooled connection. */
export class PostgresDriver extends PostgresExecutor implements SqlDriver {
  readonly dialect = "postgres" as const;

  private constructor(private readonly pool: pg.Pool) {
    super(pool);
  }

  static async connect(connectionString: string): Promise<PostgresDriver> {
    const pool = new pg.Pool({ connectionString, types, max: 10 });
    // Fail at start-up, with the server's own message, rather than on the first request.
    const client = await pool.connect();
    client.release();
    return new PostgresDriver(pool);
  }

  async transaction<T>(work: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      await client.query("BEGIN");
      const result = await work(new PostgresExecutor(client));
      await client.query("COMMIT");
      return result;
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
