#!/usr/bin/env bash
# build-initramfs.sh <out.cpio> [kernel-release]
#
# The initramfs shared by every MicroVM of one kernel: the agent as /init plus
# the virtio modules. Stage 1 of the agent loads them, mounts root= (the image's
# virtio-blk disk) and switches to it. Nothing image-specific lives here.
#
# Uncompressed on purpose: decompressing under TCG costs more boot time than
# reading the extra bytes. The agent binary comes from $MICROVMS_AGENT or is built.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/kernel.sh"

[ $# -ge 1 ] || { echo "usage: $0 <out.cpio> [kernel-release]" >&2; exit 2; }
out=$1
release=${2:-$(microvms_kernel_release)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{dev,proc,sys,newroot}
agent=$(microvms_build_agent "$work")
install -m 0755 "$agent" "$root/init"
microvms_stage_modules "$release" "$root"

# Reproducible: fixed order and times. Ownership does not matter here, only
# PID 1 (root) reads these files, and it deletes them before switching root.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(stat -c %s "$out") bytes, kernel $release, modules:" \
	$(sed 's|.*/||; s|\.ko$||' "$root/lib/modules/$release/modules.microvms") >&2
