/** How the benchmarks print: plain-text tables for people, numbers rounded for reading. */

export interface Spread {
  median: number;
  min: number;
  max: number;
}

export function spread(values: number[]): Spread {
  if (values.length === 0) throw new Error("no values to summarize");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

export const spreadCells = (s: Spread): number[] => [round(s.median), round(s.min), round(s.max)];

/** A table of medians, minimums and maximums, one row per measured quantity. */
export function spreadTable(unit: string, rows: [label: string, spread: Spread][]): string {
  return table([unit, "median", "min", "max"], rows.map(([label, s]) => [label, ...spreadCells(s)]));
}

export const mapSpread = (s: Spread, digits: number): Spread => ({ median: round(s.median, digits), min: round(s.min, digits), max: round(s.max, digits) });

export const MiB = 1024 * 1024;

/** Bytes as MiB, to 0.1. */
export const mib = (bytes: number): number => round(bytes / MiB, 1);

/** Rounds to `digits` decimals, for printing and for the JSON line. */
export function round(value: number, digits = 0): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** A table with a header row; the first column left-aligned, numbers right-aligned. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((row) => row.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((row) => (row[i] ?? "").length)));
  const line = (row: string[]) =>
    row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ").trimEnd();
  return [line(cells[0]!), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)].join("\n");
}

export function heading(title: string): void {
  console.log(`\n== ${title}`);
}
