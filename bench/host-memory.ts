import { readFileSync } from "node:fs";

/** What a process costs the host in memory, MiB: resident, and resident with shared pages split among their users. */
export interface ProcessMemory {
  rssMiB: number;
  pssMiB: number;
}

/** From /proc/<pid>/smaps_rollup (Linux 4.14+), whose sizes are in kB. */
export function processMemory(pid: number): ProcessMemory {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  const kib = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(rollup);
    if (!match) throw new Error(`no ${field} in /proc/${pid}/smaps_rollup`);
    return Number(match[1]);
  };
  return { rssMiB: kib("Rss") / 1024, pssMiB: kib("Pss") / 1024 };
}
