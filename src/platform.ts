import { readFileSync } from "node:fs";
import { arch } from "node:os";
import type { Architecture, Chipset } from "./api/generated/types.js";

/**
 * The CPU configuration of this host, which builds default to. The spec knows
 * ARM_64/GRAVITON; on x86-64 hosts we report X86_64 with the vendor as chipset and
 * the x86-64 microarchitecture level (v1-v4) as its generation, which is what
 * decides whether a snapshot can be restored on another host.
 */
export interface HostPlatform {
  architecture: Architecture;
  chipset: Chipset;
  chipsetGeneration: string;
}

function x86Level(flags: Set<string>): string {
  const has = (...names: string[]) => names.every((n) => flags.has(n));
  if (has("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")) return "x86-64-v4";
  if (has("avx", "avx2", "bmi1", "bmi2", "fma", "movbe")) return "x86-64-v3";
  if (has("cx16", "popcnt", "sse4_1", "sse4_2", "ssse3")) return "x86-64-v2";
  return "x86-64-v1";
}

export function detectHostPlatform(cpuinfo?: string): HostPlatform {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/cpuinfo", "utf8");
    } catch {
      text = "";
    }
  }
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, "m").exec(text!)?.[1]?.trim() ?? "";
  if (arch() === "arm64" || field("CPU architecture") === "8") {
    // Graviton generations by Neoverse core: N1 (0xd0c) is Graviton2, V1 (0xd40) Graviton3, V2 (0xd4f) Graviton4.
    const part = field("CPU part");
    const generation = { "0xd0c": "2", "0xd40": "3", "0xd4f": "4" }[part] ?? (part || "unknown");
    return { architecture: "ARM_64", chipset: "GRAVITON", chipsetGeneration: generation };
  }
  const vendor = field("vendor_id");
  return {
    architecture: "X86_64",
    chipset: vendor === "AuthenticAMD" ? "AMD" : "INTEL",
    chipsetGeneration: x86Level(new Set(field("flags").split(/\s+/))),
  };
}
