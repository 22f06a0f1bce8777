import { chmod, copyFile, mkdir, rm, stat, unlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { renderAgentConfig, CONFIG_PATH, type AgentConfig } from "../agent/config.js";
import { runCommand } from "../process/run-command.js";

/**
 * Assembles an image version's root disk without mounting anything:
 *
 *   the caller's `populate` fills the staging tree: a base image's tree plus the
 *   code under /var/task, or an OCI image's layers
 *   + the agent as /sbin/init, + /etc/microvms/agent.conf
 *   ─mkfs.ext4 -d─► disk.ext4 (sparse) ─► staging removed
 *
 * Staged files that replace existing ones are unlinked first: a base image is
 * staged with hard links, and writing through one would change the cached base
 * image for every later build.
 */
export interface DiskPlan {
  agent: string;
  /** Where to stage the tree (removed afterwards) and write the disk. */
  staging: string;
  disk: string;
  /** Fills the staging root; says how large the user's code is and how the agent starts it. */
  populate(root: string): Promise<{ codeSizeInBytes: number; agentConfig: AgentConfig }>;
}

/** Stages a base image's tree (hard links where the filesystem allows) and the code artifact under /var/task. */
export async function stageBaseAndCode(baseRoot: string, root: string, addCode: (taskDir: string) => Promise<number>): Promise<number> {
  await rm(root, { recursive: true, force: true });
  await runCommand("cp", ["-al", baseRoot, root], { what: `staging ${root}` }).catch(() =>
    runCommand("cp", ["-a", baseRoot, root], { what: `staging ${root}` }),
  );
  const task = join(root, "var", "task");
  await rm(task, { recursive: true, force: true });
  await mkdir(task, { mode: 0o755 });
  const size = await addCode(task);
  // As in Lambda, the code is not writable by the application.
  await runCommand("chmod", ["-R", "a+rX,go-w", task], { what: `staging ${root}` });
  return size;
}

/** Room left for the application to write, on top of what the image holds. Sparse on the host. */
const FREE_SPACE_MIB = 512;

export async function assembleDisk(plan: DiskPlan): Promise<{ codeSizeInBytes: number; diskSizeInBytes: number }> {
  const what = `the disk ${plan.disk}`;
  const run = (command: string, args: string[], captureStdout = false) => runCommand(command, args, { what, captureStdout });
  await rm(plan.staging, { recursive: true, force: true });
  await mkdir(dirname(plan.staging), { recursive: true });
  try {
    const { codeSizeInBytes, agentConfig } = await plan.populate(plan.staging);
    // What the agent and the kernel expect to find, whatever the tree came from.
    for (const dir of ["dev", "proc", "sys", "run", "tmp", "sbin", "etc/microvms"]) await mkdir(join(plan.staging, dir), { recursive: true });

    const init = join(plan.staging, "sbin", "init");
    await mkdir(dirname(init), { recursive: true });
    await unlink(init).catch(() => {});
    await copyFile(plan.agent, init);
    await chmod(init, 0o755);

    const config = join(plan.staging, CONFIG_PATH);
    await mkdir(dirname(config), { recursive: true });
    await unlink(config).catch(() => {});
    await writeFile(config, renderAgentConfig(agentConfig), { mode: 0o644 });

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
