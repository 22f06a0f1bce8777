#!/usr/bin/env bash
# run-demo.sh [work-dir]
#
# From Debian packages to an HTTP answer from a MicroVM:
#   1. builds the agent (musl, static),
#   2. builds the shared initramfs (agent as /init + virtio modules),
#   3. builds a BusyBox root disk with the sample app (demo/app) and GREETING,
#   4. boots it under QEMU (TCG, q35, virtio-pci), waits for the agent's
#      "ready", GETs / through the host-forwarded port, powers the VM off
#      through the agent and checks that QEMU is gone.
#
# Needs: qemu-system-x86 linux-image-cloud-amd64 busybox-static musl-tools
# e2fsprogs (Debian) and node >= 20. No root, no mounts, no network.
# MICROVMS_MEM (MiB, default 256) and MICROVMS_ACCEL (default tcg) tune the VM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/kernel.sh"

work=${1:-${TMPDIR:-/tmp}/microvms-demo}
mkdir -p "$work"
for tool in qemu-system-x86_64 musl-gcc mkfs.ext4 busybox node; do
	command -v "$tool" > /dev/null || { echo "missing $tool" >&2; exit 1; }
done
release=$(microvms_kernel_release)
kernel=/boot/vmlinuz-$release
[ -r "$kernel" ] || { echo "cannot read $kernel" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }
elapsed() { local t0=$1; echo "$(( ($(date +%s%N) - t0) / 1000000 )) ms"; }

step "agent"
t=$(date +%s%N)
make -s -C "$here/agent" OUT="$work"
export MICROVMS_AGENT=$work/microvms-agent
echo "$MICROVMS_AGENT: $(stat -c %s "$MICROVMS_AGENT") bytes ($(elapsed "$t"))"

step "initramfs for $release"
t=$(date +%s%N)
"$here/initramfs/build-initramfs.sh" "$work/initramfs.cpio" "$release"
echo "($(elapsed "$t"))"

step "root disk with demo/app"
t=$(date +%s%N)
"$here/rootfs/build-busybox-rootfs.sh" "$work/root.ext4" "$here/demo/app" \
	--kernel-release "$release" --env 'GREETING=Hello from a MicroVM'
echo "($(elapsed "$t"))"

step "boot"
node "$here/demo/demo.mjs" --kernel "$kernel" --initrd "$work/initramfs.cpio" \
	--rootfs "$work/root.ext4" --dir "$work/vm" \
	--mem "${MICROVMS_MEM:-256}" --accel "${MICROVMS_ACCEL:-tcg}"
