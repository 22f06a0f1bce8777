import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

/**
 * docs/SPECIFICATION.md cites the files that check each promise. Those citations
 * must not rot: every repository path it writes in backticks exists (a glob, at
 * least one match), and the performance table keeps the rows the bench measures.
 */

/** The repository root, above this file in test/unit (tsx) or dist/test/unit (compiled). */
function findProjectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "model"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no project root above ${import.meta.url}`);
    dir = parent;
  }
}

const root = findProjectRoot();
const specification = readFileSync(join(root, "docs", "SPECIFICATION.md"), "utf8");

/**
 * A repository path: relative, segments of plain file-name characters (so `<data dir>/x.json`
 * and `/2017-03-31/tags/{ARN}` are not), ending in a file extension; `*` is taken anywhere
 * here so that exists() can refuse one outside the last segment.
 */
const REPO_PATH = /^(?:[\w@.*-]+\/)+[\w@.*-]*\.(?:ts|js|mjs|cjs|json|md|c|h|sh|py|yaml|yml|toml|txt)$/;

function citedPaths(text: string): string[] {
  const tokens = [...text.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]!);
  return [...new Set(tokens.filter((token) => token.includes("/") && REPO_PATH.test(token)))];
}

/** Whether `path` exists; a `*` in the last segment matches any run of characters, and the glob needs one match. */
function exists(path: string): boolean {
  const slash = path.lastIndexOf("/");
  const dir = path.slice(0, slash);
  const name = path.slice(slash + 1);
  if (dir.includes("*")) throw new Error(`${path}: a glob may have * only in its last segment`);
  if (!name.includes("*")) return existsSync(join(root, path));
  const pattern = new RegExp(`^${name.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`);
  const full = join(root, dir);
  return existsSync(full) && readdirSync(full).some((entry) => pattern.test(entry));
}

test("every file the specification cites exists", () => {
  const paths = citedPaths(specification);
  // Guards against an extraction that finds nothing and so checks nothing.
  assert.ok(paths.length >= 20, `only ${paths.length} cited paths found: ${paths.join(", ")}`);
  for (const required of ["model/lambda-microvms-2025-09-09.json", "bench/run-microvm.ts", "test/vm/idle.test.ts"]) {
    assert.ok(paths.includes(required), `the specification no longer cites ${required}`);
  }
  const missing = paths.filter((path) => !exists(path));
  assert.deepEqual(missing, [], `docs/SPECIFICATION.md cites paths that do not exist: ${missing.join(", ")}`);
});

test("the path extraction takes repository paths and globs, and nothing else", () => {
  assert.deepEqual(
    citedPaths(
      "`bench/run-microvm.ts`, `test/builder/*.test.ts`, `model/x.json`, `guest/a.c`, `scripts/test.sh`, " +
        "`clientToken`, `file://`, `/2017-03-31/tags/{ARN}`, `@aws-sdk/client-lambda`, `<data dir>/builds/<id>/phases.json`, `a.b`",
    ),
    ["bench/run-microvm.ts", "test/builder/*.test.ts", "model/x.json", "guest/a.c", "scripts/test.sh"],
  );
  assert.equal(exists("test/unit/*.test.ts"), true);
  assert.equal(exists("test/unit/*.nothing"), false);
  assert.equal(exists("test/unit/no-such-file.test.ts"), false);
});

/** The rows of the table under the heading `## Performance promises`, as cells. */
function performanceRows(): string[][] {
  const start = specification.indexOf("\n## Performance promises\n");
  assert.notEqual(start, -1, "docs/SPECIFICATION.md has no '## Performance promises' section");
  const rest = specification.slice(start + 1);
  const end = rest.indexOf("\n## ", 1);
  const section = end === -1 ? rest : rest.slice(0, end);
  const rows = section
    .split("\n")
    .filter((line) => line.startsWith("|"))
    .map((line) => line.replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim()));
  assert.deepEqual(rows[0], ["promise", "measured by", "last measured"], "the performance table's header");
  return rows.slice(2); // the header and its --- line
}

test("the performance table keeps a row, with a bench file, for each measured promise; targets have numbers", () => {
  const rows = performanceRows();
  // What each row's promise cell must match, and whether an open issue sets it a target.
  const required: [what: string, promise: RegExp, target: boolean][] = [
    ["restore → first byte", /^restore\b.*first byte/i, true],
    ["RunMicrovm → first byte", /RunMicrovm.*first byte/, true],
    ["cold boot / restore", /cold boot.*restore/i, true],
    ["ResumeMicrovm → first byte", /ResumeMicrovm.*first byte/, true],
    ["SuspendMicrovm → SUSPENDED", /SuspendMicrovm/, true],
    ["host memory per MicroVM", /host memory/i, true],
    ["proxy throughput", /proxy throughput/i, true],
    ["build time per phase", /build.*phase/i, false],
  ];
  for (const [what, promise, target] of required) {
    const row = rows.find((cells) => promise.test(cells[0] ?? ""));
    assert.ok(row, `the performance table has no row for ${what}`);
    if (target) assert.match(row[0]!, /target [≤≥] [\d.]+/, `the ${what} row states no target`);
  }
  for (const cells of rows) {
    assert.equal(cells.length, 3, `a performance row without three cells: ${cells.join(" | ")}`);
    if (/target/i.test(cells[0]!)) assert.match(cells[0]!, /target [≤≥] [\d.]+/, `a target without a number: ${cells[0]}`);
    assert.match(cells[1]!, /`bench\/[\w.-]+\.ts`/, `a performance row cites no bench file: ${cells[0]}`);
  }
});
