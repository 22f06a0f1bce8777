/**
 * The little a store needs from a SQL database. SQL is written once, in the subset
 * SQLite and PostgreSQL share, with `?` placeholders; each driver adapts the rest
 * (placeholders, the substring function, transactions).
 */
export type SqlValue = string | number | null;
export type Row = Record<string, SqlValue>;

export interface SqlExecutor {
  /** Runs a statement and returns its rows (the RETURNING rows for writes). */
  query(sql: string, params?: SqlValue[]): Promise<Row[]>;
  /** Runs a statement and returns the number of rows it changed. */
  execute(sql: string, params?: SqlValue[]): Promise<number>;
  /** SQL that is true when `column` contains the next `?` parameter, case-sensitively. */
  containsSql(column: string): string;
}

export interface SqlDriver extends SqlExecutor {
  readonly dialect: "sqlite" | "postgres";
  /** Runs `work` in one transaction: committed if it resolves, rolled back if it throws. */
  transaction<T>(work: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
