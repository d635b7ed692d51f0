#!/usr/bin/env bash
# Builds the hyperlet guest kernel: Debian's linux-source-6.1 + `make tinyconfig`
# + hyperlet.config, to an uncompressed PVH vmlinux. The result is cached by a
# hash of (kernel source version, config fragment, this script), so it is built
# once per machine.
#
# usage: guest/kernel/build.sh OUTPUT_VMLINUX
set -euo pipefail

out=${1:?usage: build.sh OUTPUT_VMLINUX}
here=$(cd "$(dirname "$0")" && pwd)
cache=${HYPERLET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet}
jobs=${JOBS:-$(nproc)}

tarball=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -n1 || true)
[ -n "$tarball" ] || { echo "build.sh: /usr/src/linux-source-6.1.tar.* missing (apt-get install linux-source-6.1)" >&2; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$srcver"; cat "$here/hyperlet.config" "$here/build.sh"; } | sha256sum | cut -c1-16)
cached="$cache/kernel/$key/vmlinux"

if [ ! -f "$cached" ]; then
	echo "build.sh: building guest kernel $srcver (key $key); takes a few minutes"
	work="$cache/kernel/build-$key"
	rm -rf "$work" && mkdir -p "$work"
	tar -C "$work" -xf "$tarball"
	src=$(echo "$work"/linux-source-6.1)
	make -C "$src" -s tinyconfig >/dev/null 2>&1
	"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/hyperlet.config" >/dev/null 2>&1
	make -C "$src" -s olddefconfig
	# Every option in the fragment must have survived dependency resolution.
	missing=0
	while IFS= read -r line; do
		case "$line" in ''|'#'*) continue ;; esac
		opt=${line%%=*}; val=${line#*=}
		if [ "$val" = n ]; then
			grep -q "^$opt=" "$src/.config" && { echo "build.sh: $opt should be unset" >&2; missing=1; }
		else
			grep -qx "$line" "$src/.config" || { echo "build.sh: $line did not survive olddefconfig" >&2; missing=1; }
		fi
	done < "$here/hyperlet.config"
	[ "$missing" = 0 ] || exit 1
	make -C "$src" -s -j"$jobs" vmlinux
	mkdir -p "$(dirname "$cached")"
	cp "$src/vmlinux" "$cached.tmp" && cp "$src/.config" "$(dirname "$cached")/config"
	mv "$cached.tmp" "$cached"
	rm -rf "$work"
fi
mkdir -p "$(dirname "$out")"
cp "$cached" "$out.tmp" && mv "$out.tmp" "$out"
echo "build.sh: $out ($srcver, key $key)"
