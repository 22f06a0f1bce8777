import { chmod, copyFile, mkdir, rm, stat, unlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { renderAgentConfig, CONFIG_PATH, type AgentConfig } from "../guest/agent-config.js";
import { runCommand } from "../process/run-command.js";

/**
 * Assembles an image version's root disk without mounting anything:
 *
 *   base image tree ─cp -al─► staging tree (hard links: fast, and the base stays untouched)
 *   + the agent as /sbin/init, + /etc/microvms/agent.conf
 *   + the code artifact under /var/task (by the caller's `addCode`)
 *   ─mkfs.ext4 -d─► disk.ext4 (sparse) ─► staging removed
 *
 * Staged files that replace base files are unlinked first: writing through a
 * hard link would change the cached base image for every later build.
 */
export interface DiskPlan {
  baseRoot: string;
  agent: string;
  agentConfig: AgentConfig;
  /** Where to stage the tree (removed afterwards) and write the disk. */
  staging: string;
  disk: string;
  /** Fills the staged /var/task; returns the code's size in bytes. */
  addCode(taskDir: string): Promise<number>;
}

/** Room left for the application to write, on top of what the image holds. Sparse on the host. */
const FREE_SPACE_MIB = 512;

export async function assembleDisk(plan: DiskPlan): Promise<{ codeSizeInBytes: number; diskSizeInBytes: number }> {
  const what = `the disk ${plan.disk}`;
  const run = (command: string, args: string[], captureStdout = false) => runCommand(command, args, { what, captureStdout });
  await rm(plan.staging, { recursive: true, force: true });
  await mkdir(dirname(plan.staging), { recursive: true });
  try {
    await run("cp", ["-al", plan.baseRoot, plan.staging]).catch(() => run("cp", ["-a", plan.baseRoot, plan.staging]));

    const init = join(plan.staging, "sbin", "init");
    await mkdir(dirname(init), { recursive: true });
    await unlink(init).catch(() => {});
    await copyFile(plan.agent, init);
    await chmod(init, 0o755);

    const config = join(plan.staging, CONFIG_PATH);
    await mkdir(dirname(config), { recursive: true });
    await unlink(config).catch(() => {});
    await writeFile(config, renderAgentConfig(plan.agentConfig), { mode: 0o644 });

    const task = join(plan.staging, "var", "task");
    await rm(task, { recursive: true, force: true });
    await mkdir(task, { mode: 0o755 });
    const codeSizeInBytes = await plan.addCode(task);
    // As in Lambda, the code is not writable by the application.
    await run("chmod", ["-R", "a+rX,go-w", task]);

    const sizes = (await run("du", ["-s", "--apparent-size", "--block-size=1", plan.staging], true)).split(/\s/)[0];
    const inodes = (await run("find", [plan.staging, "-xdev"], true)).split("\n").length;
    // Content, ~10% for ext4's own metadata, a 4 MiB journal, then free space.
    const sizeMiB = Math.ceil((Number(sizes) * 1.1) / 2 ** 20) + 4 + FREE_SPACE_MIB;
    await rm(plan.disk, { force: true });
    await run("mkfs.ext4", [
      "-q", "-F", "-L", "microvms-root", "-b", "4096", "-N", String(inodes + 16_384),
      "-E", "root_owner=0:0", "-d", plan.staging, plan.disk, `${sizeMiB}M`,
    ]);
    return { codeSizeInBytes, diskSizeInBytes: (await stat(plan.disk)).blocks * 512 };
  } finally {
    await rm(plan.staging, { recursive: true, force: true });
  }
}
