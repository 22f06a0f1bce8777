#!/usr/bin/env bash
# Installs everything microvms needs on a Debian 12 machine, idempotently:
# Debian packages (apt-get), npm packages (npm ci, from the lockfile), and the build.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-system-x86, qemu-utils: the VM driver (QEMU, and qemu-img for per-MicroVM disk overlays).
# linux-image-cloud-amd64: the guest kernel (installed for its /boot/vmlinuz and modules, never booted by the host).
# musl-tools: builds the guest agent, a static binary. busybox-static: the busybox base image and the initramfs's cpio.
# e2fsprogs: mkfs.ext4 -d makes image disks without mounting. debootstrap: the Debian base images.
# curl: the demo calls a MicroVM endpoint with it.
# docker-registry, skopeo, apache2-utils (htpasswd): OCI artifact tests run a real registry and push with skopeo.
# awscli: conformance tests drive the server with the stock AWS CLI v2.
# postgresql: the store suite also runs against PostgreSQL.
packages=(qemu-system-x86 qemu-utils linux-image-cloud-amd64 musl-tools busybox-static e2fsprogs debootstrap curl docker-registry skopeo apache2-utils awscli postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a cluster on install; microvms starts its own when it needs one.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h | while read -r ver name _; do $sudo pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund
fi
npm run --silent build
# The guest agent (C, musl, static): PID 1 of every MicroVM.
make -s -C guest/agent OUT="$PWD/build/guest"
