import { readFileSync } from "node:fs";
import { round } from "./report.js";

/** What a QEMU process costs the host in memory, MiB. */
export interface QemuMemory {
  /** Resident. */
  rssMiB: number;
  /** Resident, with each shared page split among the processes mapping it. */
  pssMiB: number;
  /** Resident part of the guest's RAM mapping; undefined if no mapping has the guest's size. */
  guestRamMiB: number | undefined;
}

/**
 * From /proc/<pid>/smaps_rollup and /proc/<pid>/smaps (sizes in kB). The guest's
 * RAM is the mapping exactly `guestMiB` long, QEMU maps it whole: anonymous after
 * a cold boot, the snapshot's memory.ram mapped privately after a restore.
 */
export function qemuMemory(pid: number, guestMiB: number): QemuMemory {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  let guestRamMiB: number | undefined;
  for (const mapping of readFileSync(`/proc/${pid}/smaps`, "utf8").split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(mapping);
    if (!range || parseInt(range[2]!, 16) - parseInt(range[1]!, 16) !== guestMiB * 1024 * 1024) continue;
    guestRamMiB = kib(mapping, "Rss") / 1024;
    break;
  }
  return { rssMiB: kib(rollup, "Rss") / 1024, pssMiB: kib(rollup, "Pss") / 1024, guestRamMiB };
}

/** Rounded to 0.1 MiB, for printing and for the JSON line. */
export function roundMemory(m: QemuMemory): QemuMemory {
  return { rssMiB: round(m.rssMiB, 1), pssMiB: round(m.pssMiB, 1), guestRamMiB: m.guestRamMiB === undefined ? undefined : round(m.guestRamMiB, 1) };
}

/** MemAvailable from /proc/meminfo, MiB: the kernel's estimate of what new processes can get without swapping. */
export function memAvailableMiB(): number {
  return kib(readFileSync("/proc/meminfo", "utf8"), "MemAvailable", "/proc/meminfo") / 1024;
}

function kib(text: string, field: string, source = "smaps"): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text);
  if (!match) throw new Error(`no ${field} in ${source}`);
  return Number(match[1]);
}
