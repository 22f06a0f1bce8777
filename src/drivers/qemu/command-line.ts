import { join } from "node:path";

/**
 * QEMU's command line for one VM. Every choice here was measured on the target
 * machines (docs/research/guest-boot.md):
 * - q35 with virtio-pci: `-M microvm` (virtio-mmio) finds no devices with
 *   Debian's cloud kernel.
 * - tb-size=32 caps TCG's translation cache (it grows to ~55 MiB otherwise).
 * - virtio-balloon free page reporting hands memory the guest frees back to the host.
 * - user-mode networking, `restrict=on` unless the MicroVM has egress: the guest
 *   then reaches nothing but the forwards the host adds (hostfwd_add).
 * - guest RAM in a memory-backend-file when snapshotting or restoring (see snapshot()).
 * - QMP and the agent's virtio-serial port are unix sockets QEMU listens on,
 *   so the host can connect again after its own restart.
 */
export type Acceleration = "kvm" | "tcg";

export interface QemuLayout {
  qmpSocket: string;
  agentSocket: string;
  pidFile: string;
  consoleLog: string;
  /** QEMU's own stdout and stderr. */
  qemuLog: string;
}

export function qemuLayout(runDir: string): QemuLayout {
  return {
    qmpSocket: join(runDir, "qmp.sock"),
    agentSocket: join(runDir, "agent.sock"),
    pidFile: join(runDir, "qemu.pid"),
    consoleLog: join(runDir, "console.log"),
    qemuLog: join(runDir, "qemu.log"),
  };
}

export interface QemuMachine {
  accel: Acceleration;
  kernel: string;
  initrd: string;
  /** Without a disk the agent runs from the initramfs (used to probe acceleration). */
  disk?: { path: string; format: "raw" | "qcow2" };
  memoryMiB: number;
  memory?: { path: string; share: boolean };
  egress: boolean;
  layout: QemuLayout;
  /** Wait for a migration stream (a snapshot) instead of booting. */
  incoming?: boolean;
}

/** Kernel command line: the agent's stage 1 mounts root= itself (virtio_blk is a module). */
function kernelCommandLine(machine: QemuMachine): string {
  const args = ["console=ttyS0", "panic=-1", "quiet"];
  if (machine.disk) args.push("root=/dev/vda", "rw");
  return args.join(" ");
}

export function qemuArguments(machine: QemuMachine): string[] {
  const { layout } = machine;
  // Guest RAM in a file: with x-ignore-shared, snapshots then carry only device state.
  const memory = machine.memory
    ? ["-object", `memory-backend-file,id=ram,size=${machine.memoryMiB}M,mem-path=${machine.memory.path},share=${machine.memory.share ? "on" : "off"}`]
    : [];
  const args = [
    "-M", machine.memory ? "q35,memory-backend=ram" : "q35",
    ...memory,
    ...(machine.accel === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg,tb-size=32"]),
    "-m", String(machine.memoryMiB),
    "-smp", "1",
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-kernel", machine.kernel,
    "-initrd", machine.initrd,
    "-append", kernelCommandLine(machine),
    "-serial", `file:${layout.consoleLog}`,
    "-netdev", `user,id=net0,restrict=${machine.egress ? "off" : "on"}`,
    "-device", "virtio-net-pci,netdev=net0",
    "-device", "virtio-serial-pci",
    "-chardev", `socket,id=agent,path=${layout.agentSocket},server=on,wait=off`,
    "-device", "virtserialport,chardev=agent,name=microvms.agent",
    "-device", "virtio-balloon-pci,free-page-reporting=on",
    // A new generation id in every VM restored from a snapshot, for guest kernels that reseed from it.
    "-device", "vmgenid,guid=auto",
    "-qmp", `unix:${layout.qmpSocket},server=on,wait=off`,
    "-pidfile", layout.pidFile,
  ];
  if (machine.incoming) args.push("-incoming", "defer");
  if (machine.disk) {
    args.push(
      "-drive", `file=${machine.disk.path},format=${machine.disk.format},if=none,id=root,cache=writeback`,
      "-device", "virtio-blk-pci,drive=root",
    );
  }
  return args;
}

/** Parses HMP `info usernet` for the host port forwarded to `guestPort`. */
export function forwardedHostPort(infoUsernet: string, guestPort: number): number | undefined {
  for (const line of infoUsernet.split("\n")) {
    const m = /TCP\[HOST_FORWARD\]\s+\d+\s+\S+\s+(\d+)\s+\S+\s+(\d+)/.exec(line);
    if (m && Number(m[2]) === guestPort) return Number(m[1]);
  }
  return undefined;
}
