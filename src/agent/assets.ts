import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { projectRoot } from "../paths.js";
import { runCommand } from "../process/run-command.js";

/**
 * What every guest boots: Debian's cloud kernel, and one initramfs per kernel
 * and agent build holding the agent (as /init) and the kernel's virtio modules.
 *
 *   agent.c ─make (musl, static)─► build/guest/microvms-agent
 *   kernel release + agent hash ─guest/initramfs/build-initramfs.sh─► <cache>/guest/initramfs-<release>-<hash>.cpio
 *
 * The agent is built by the project's setup; it is rebuilt here only when its
 * source is newer, so a checkout that changed agent.c never boots a stale agent.
 */
export interface GuestAssets {
  kernelRelease: string;
  kernel: string;
  initrd: string;
  /** The agent binary, which image disks carry as /sbin/init. */
  agent: string;
}

const guestDir = join(projectRoot, "guest");
const agentBinary = join(projectRoot, "build", "guest", "microvms-agent");

/** The newest installed linux-image-cloud-amd64 kernel, or $MICROVMS_KERNEL_RELEASE. */
export async function kernelRelease(): Promise<string> {
  const chosen = process.env.MICROVMS_KERNEL_RELEASE;
  if (chosen) return chosen;
  const releases = (await readdir("/boot").catch(() => []))
    .filter((f) => f.startsWith("vmlinuz-") && f.endsWith("-cloud-amd64"))
    .map((f) => f.slice("vmlinuz-".length))
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  const newest = releases.at(-1);
  if (!newest) throw new Error("no guest kernel: /boot has no vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)");
  return newest;
}

async function mtime(path: string): Promise<number | undefined> {
  return (await stat(path).catch(() => undefined))?.mtimeMs;
}

export async function ensureAgent(): Promise<string> {
  const built = await mtime(agentBinary);
  const source = Math.max((await mtime(join(guestDir, "agent", "agent.c"))) ?? 0, (await mtime(join(guestDir, "agent", "Makefile"))) ?? 0);
  if (built === undefined || built < source) {
    await runCommand("make", ["-s", "-C", join(guestDir, "agent"), `OUT=${join(projectRoot, "build", "guest")}`], {
      what: "the guest agent",
      debianPackage: "musl-tools",
    });
  }
  return agentBinary;
}

let pending: Promise<GuestAssets> | undefined;

/** The kernel, initramfs and agent, building what is missing (once per process). */
export function guestAssets(cacheDir: string): Promise<GuestAssets> {
  pending ??= prepare(cacheDir).catch((error: unknown) => {
    pending = undefined;
    throw error;
  });
  return pending;
}

async function prepare(cacheDir: string): Promise<GuestAssets> {
  const release = await kernelRelease();
  const kernel = `/boot/vmlinuz-${release}`;
  const agent = await ensureAgent();
  const hash = createHash("sha256").update(await readFile(agent)).digest("hex").slice(0, 12);
  const dir = join(cacheDir, "guest");
  const initrd = join(dir, `initramfs-${release}-${hash}.cpio`);
  if ((await mtime(initrd)) === undefined) {
    await mkdir(dir, { recursive: true });
    const partial = `${initrd}.${process.pid}`;
    await runCommand("bash", [join(guestDir, "initramfs", "build-initramfs.sh"), partial, release], {
      what: `the initramfs for kernel ${release}`,
      env: { ...process.env, MICROVMS_AGENT: agent },
    });
    await rename(partial, initrd); // whole or not at all, even with two servers on one cache
  }
  return { kernelRelease: release, kernel, initrd, agent };
}
