# Shared by the guest image scripts: which kernel to boot and which of its
# modules the agent loads. Source it; it defines functions only.

# Drivers the guest needs, in load order (dependencies are resolved from
# modules.dep as well). Debian's cloud kernel builds all of them as modules.
MICROVMS_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
failover net_failover virtio_net virtio_console virtio_blk virtio_rng virtio_balloon"

# Prints the release of the kernel to boot: $MICROVMS_KERNEL_RELEASE, or the
# newest installed linux-image-cloud-amd64 kernel.
microvms_kernel_release() {
	if [ -n "${MICROVMS_KERNEL_RELEASE:-}" ]; then
		echo "$MICROVMS_KERNEL_RELEASE"
		return
	fi
	local k
	k=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$k" ]; then
		echo "no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64" >&2
		return 1
	fi
	echo "${k#/boot/vmlinuz-}"
}

# microvms_stage_modules <release> <root-dir>
# Copies the modules into <root-dir>/lib/modules/<release>/, decompressed
# (this kernel has no MODULE_DECOMPRESS, and finit_module needs plain ELF),
# and writes modules.microvms: the files to load, dependencies first.
microvms_stage_modules() {
	local release=$1 root=$2
	local src=/lib/modules/$release dst=$2/lib/modules/$release
	[ -f "$src/modules.dep" ] || { echo "missing $src/modules.dep" >&2; return 1; }
	mkdir -p "$dst"
	: > "$dst/modules.microvms"
	local seen=" " name
	for name in $MICROVMS_MODULES; do
		_microvms_add_module "$name" || return 1
	done
}

# Appends one module after its dependencies (modules.dep lists them with the
# deepest last). Uses $src, $dst and $seen from microvms_stage_modules.
_microvms_add_module() {
	local name=${1//-/_} line file deps dep i pattern
	case "$seen" in *" $name "*) return 0 ;; esac
	seen="$seen$name "
	# Module names use '_' where file names may use '-' (virtio_rng is virtio-rng.ko).
	pattern="${name//_/[-_]}\.ko(\.(xz|zst|gz))?"
	if grep -qE "/$pattern$" "$src/modules.builtin" 2>/dev/null; then
		return 0
	fi
	line=$(grep -E "(^|/)$pattern:" "$src/modules.dep" | head -n 1)
	if [ -z "$line" ]; then
		echo "kernel $release has no module $name" >&2
		return 1
	fi
	file=${line%%:*}
	deps=(${line#*:})
	for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
		dep=${deps[i]##*/}
		_microvms_add_module "${dep%%.ko*}" || return 1
	done
	mkdir -p "$dst/$(dirname "$file")"
	case "$file" in
	*.ko.xz) xz -dc "$src/$file" > "$dst/${file%.xz}" ;;
	*.ko.zst) zstd -qdc "$src/$file" > "$dst/${file%.zst}" ;;
	*.ko.gz) gzip -dc "$src/$file" > "$dst/${file%.gz}" ;;
	*) cp "$src/$file" "$dst/$file" ;;
	esac
	echo "${file%.ko*}.ko" >> "$dst/modules.microvms"
}

# microvms_build_agent <out-dir>: builds the agent unless $MICROVMS_AGENT names
# a binary; prints the binary's path.
microvms_build_agent() {
	if [ -n "${MICROVMS_AGENT:-}" ]; then
		echo "$MICROVMS_AGENT"
		return
	fi
	local here
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	make -s -C "$here/agent" OUT="$1" >&2 || return 1
	echo "$1/microvms-agent"
}
