import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { forwardedHostPort, qemuArguments, qemuLayout } from "../../src/drivers/qemu/command-line.js";
import { parseFrame, unescapeFrame } from "../../src/agent/channel.js";
import { renderAgentConfig } from "../../src/agent/config.js";

describe("the agent's channel and configuration", () => {
  test("frames split at the first space and unescape the agent's escapes", () => {
    assert.deepEqual(parseFrame("ready uptime_ms=12"), { kind: "ready", payload: "uptime_ms=12" });
    assert.deepEqual(parseFrame("hello"), { kind: "hello", payload: "" });
    assert.deepEqual(parseFrame("stdout a\\tb\\\\n\\x1b[0m é"), { kind: "stdout", payload: "a\tb\\n\x1b[0m é" });
    assert.equal(unescapeFrame("line\\nnext\\r"), "line\nnext\r");
  });

  test("the configuration escapes values the way the agent reads them", () => {
    const text = renderAgentConfig({
      args: ["/var/task/bootstrap", "two words"],
      environment: { GREETING: "Hello\nworld", PATHLIKE: "a\\b\tc", BELL: "\x07" },
      workdir: "/var/task",
      user: "1000:1000",
      readyPort: 8080,
    });
    assert.equal(
      text,
      [
        "# written by the microvms image builder",
        "user 1000:1000",
        "workdir /var/task",
        "ready_port 8080",
        "arg /var/task/bootstrap",
        "arg two words",
        "env GREETING=Hello\\nworld",
        "env PATHLIKE=a\\\\b\\tc",
        "env BELL=\\x07",
        "",
      ].join("\n"),
    );
    assert.throws(() => renderAgentConfig({ args: [], environment: { A: "x\0y" }, workdir: "/", user: "root", readyPort: 0 }), /cannot be passed/);
  });
});

describe("QEMU command lines", () => {
  const machine = {
    accel: "tcg" as const,
    kernel: "/boot/vmlinuz",
    initrd: "/cache/initramfs.cpio",
    disk: { path: "/data/disk.qcow2", format: "qcow2" as const },
    memoryMiB: 384,
    egress: false,
    layout: qemuLayout("/data/run"),
  };

  test("a MicroVM without egress gets restricted user networking; with egress, NAT", () => {
    const closed = qemuArguments(machine).join(" ");
    assert.match(closed, /-netdev user,id=net0,restrict=on/);
    assert.match(closed, /-m 384 /);
    assert.match(closed, /-accel tcg,tb-size=32/);
    assert.match(closed, /file=\/data\/disk.qcow2,format=qcow2/);
    assert.match(closed, /root=\/dev\/vda/);
    assert.match(qemuArguments({ ...machine, egress: true }).join(" "), /restrict=off/);
  });

  test("KVM uses the host CPU; without a disk the agent runs from the initramfs", () => {
    const args = qemuArguments({ ...machine, accel: "kvm", disk: undefined }).join(" ");
    assert.match(args, /-accel kvm -cpu host/);
    assert.doesNotMatch(args, /root=|virtio-blk/);
  });

  test("the host port of a forward comes from `info usernet`", () => {
    const info = [
      "Hub -1 (net0):",
      "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ",
      "  TCP[HOST_FORWARD]  13       127.0.0.1 40735       10.0.2.15  9000     0     0",
      "  TCP[HOST_FORWARD]  12       127.0.0.1 44591       10.0.2.15  8080     0     0",
    ].join("\n");
    assert.equal(forwardedHostPort(info, 8080), 44591);
    assert.equal(forwardedHostPort(info, 9000), 40735);
    assert.equal(forwardedHostPort(info, 22), undefined);
  });
});
