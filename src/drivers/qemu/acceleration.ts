import { constants } from "node:fs";
import { access, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import type { Logger } from "pino";
import { runCommand } from "../../process/run-command.js";
import { qemuLayout, type Acceleration } from "./command-line.js";
import { launch, QEMU_BINARY } from "./qemu-driver.js";

/**
 * Chooses between KVM and TCG by trying, not by looking: on some hosts
 * /dev/kvm exists and opens, yet guests hang early in boot (a nested PVM
 * hypervisor) or QEMU aborts setting up the CPU. So KVM counts only once a
 * probe VM (the initramfs alone, no disk) boots to the agent's hello.
 *
 *   MICROVMS_ACCEL=kvm|tcg ─► that
 *   no usable /dev/kvm ─► tcg
 *   cached verdict for this host boot, QEMU and kernel ─► that
 *   probe boot under KVM: hello within the limit ─► kvm, else ─► tcg (cached)
 */
export type AccelerationSetting = "auto" | Acceleration;

export interface AccelerationChoice {
  accel: Acceleration;
  /** Why, for the log and `serve` output. */
  because: string;
}

/** A KVM boot reaches the agent in well under a second; TCG takes ~2 s, a hung guest forever. */
const PROBE_TIMEOUT_MS = 8_000;

export async function qemuVersion(): Promise<string> {
  const text = await runCommand(QEMU_BINARY, ["--version"], { what: "the VM driver", captureStdout: true, debianPackage: "qemu-system-x86" });
  return /version (\S+)/.exec(text)?.[1] ?? "unknown";
}

export async function chooseAcceleration(options: {
  setting: AccelerationSetting;
  kernel: string;
  initrd: string;
  qemuVersion: string;
  cacheDir: string;
  log: Logger;
}): Promise<AccelerationChoice> {
  const { setting, log } = options;
  if (setting !== "auto") return { accel: setting, because: "set by MICROVMS_ACCEL" };
  try {
    await access("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return { accel: "tcg", because: "no usable /dev/kvm" };
  }
  const bootId = (await readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "")).trim();
  const key = JSON.stringify([bootId, options.qemuVersion, options.kernel, basename(options.initrd)]);
  const cacheFile = join(options.cacheDir, "guest", "acceleration.json");
  const cached = await readFile(cacheFile, "utf8").then((t) => JSON.parse(t) as { key: string } & AccelerationChoice, () => undefined);
  if (cached?.key === key) return { accel: cached.accel, because: `${cached.because} (probed earlier)` };

  const outcome = await probeKvm(options.kernel, options.initrd, log);
  const choice: AccelerationChoice = outcome === true
    ? { accel: "kvm", because: "a probe VM booted under KVM" }
    : { accel: "tcg", because: `/dev/kvm is present but a probe VM did not boot under KVM (${outcome})` };
  await writeFile(cacheFile, JSON.stringify({ key, ...choice })).catch(() => {});
  return choice;
}

/** True when a probe VM says hello under KVM in time; else what went wrong. */
async function probeKvm(kernel: string, initrd: string, log: Logger): Promise<true | string> {
  const runDir = await mkdtemp(join(tmpdir(), "microvms-kvm-probe-"));
  try {
    const vm = await launch(
      { accel: "kvm", kernel, initrd, memoryMiB: 256, egress: false, layout: qemuLayout(runDir) },
      "kvm-probe",
      log.child({ probe: "kvm" }),
    );
    const hello = new Promise<true | string>((resolve) => {
      const timer = setTimeout(() => resolve(`no answer within ${PROBE_TIMEOUT_MS / 1000} s`), PROBE_TIMEOUT_MS);
      vm.agent.on("frame", (frame) => {
        if (frame.kind !== "hello") return;
        clearTimeout(timer);
        resolve(true);
      });
      void vm.exited.then((exit) => {
        clearTimeout(timer);
        resolve(exit.reason);
      });
    });
    const outcome = await hello;
    await vm.stop(500);
    return outcome;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}
