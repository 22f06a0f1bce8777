import { spawn } from "node:child_process";

/**
 * Runs an external command without blocking the event loop, hands every output line to
 * `onLine` as it arrives, and on failure throws an Error that says what was being done,
 * which command failed and the last lines it wrote to stderr.
 */

export interface RunOptions {
  /** What the command is part of, first in error messages, e.g. "base image busybox/1". */
  what: string;
  onLine?: (line: string, stream: "stdout" | "stderr") => void;
  /** Keep and return stdout (for commands whose output is the answer). */
  captureStdout?: boolean;
  /** The Debian package that provides the command, named when it is missing. */
  debianPackage?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Have the kernel send the command SIGTERM if this process dies first (util-linux's
   * `setpriv --pdeathsig`), so that a long build does not go on writing after its owner is gone.
   */
  dieWithParent?: boolean;
}

/** How many lines of stderr a failure reports. */
const TAIL_LINES = 15;

export function formatCommand(command: string, args: readonly string[]): string {
  return [command, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(" ");
}

/** Splits a byte stream into lines (\n or \r, as progress meters use) and remembers the last few. */
class LineSplitter {
  private rest = "";
  readonly tail: string[] = [];
  constructor(private readonly emit: (line: string) => void) {}

  push(chunk: string): void {
    const parts = (this.rest + chunk).split(/\r\n|\n|\r/);
    this.rest = parts.pop() ?? "";
    for (const line of parts) this.line(line);
  }

  end(): void {
    if (this.rest !== "") this.line(this.rest);
    this.rest = "";
  }

  private line(line: string): void {
    if (line.trim() === "") return;
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
    this.emit(line);
  }
}

export function runCommand(command: string, args: readonly string[], opts: RunOptions): Promise<string> {
  const shown = formatCommand(command, args);
  return new Promise((resolve, reject) => {
    const [file, argv] = opts.dieWithParent ? ["setpriv", ["--pdeathsig", "TERM", "--", command, ...args]] : [command, args];
    const child = spawn(file, argv, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
    const chunks: string[] = [];
    const out = new LineSplitter((line) => opts.onLine?.(line, "stdout"));
    const err = new LineSplitter((line) => opts.onLine?.(line, "stderr"));
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      if (opts.captureStdout) chunks.push(chunk);
      else out.push(chunk);
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => err.push(chunk));
    const notFound = (missing: string, debianPackage: string | undefined) =>
      new Error(`${opts.what}: command not found: ${missing}${debianPackage ? ` (install the Debian package ${debianPackage})` : ""}`);
    child.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") reject(file === command ? notFound(command, opts.debianPackage) : notFound(file, "util-linux"));
      else reject(new Error(`${opts.what}: cannot run ${shown}: ${error.message}`));
    });
    child.on("close", (code, signal) => {
      out.end();
      err.end();
      if (code === 0) return resolve(chunks.join(""));
      // setpriv: "failed to execute debootstrap: No such file or directory", exit code 127
      if (code === 127 && file !== command && err.tail.some((l) => l.includes("No such file or directory"))) {
        return reject(notFound(command, opts.debianPackage));
      }
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      const tail = err.tail.length > 0 ? err.tail : out.tail;
      reject(new Error(`${opts.what}: ${shown} ${how}${tail.length > 0 ? `:\n${tail.join("\n")}` : ""}`));
    });
  });
}
