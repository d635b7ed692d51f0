#!/bin/sh
# Installs hyperlet on a node, or removes it. Idempotent and reversible.
#   install.sh install   [--payload DIR]   binaries, guest kernel and initrd under
#                                          /opt/hyperlet, a default config under
#                                          /etc/hyperlet (kept if present), the
#                                          systemd unit, enabled and started
#   install.sh uninstall [--purge]         stops and removes what install put there
#                                          (--purge: the config and /var/lib/hyperlet too)
# DIR holds bin/hyperlet, bin/hyperctl, share/vmlinux, share/initrd.img
# (default: the directory of this script). HOST_ROOT (default /) installs
# into another root, as the DaemonSet does with the node's / at /host; the
# systemctl calls then go through nsenter into the host's namespaces.
# SYSTEMCTL=none leaves systemd alone (tests). The node needs qemu-system-x86_64, erofs-utils and CNI plugins; install.sh
# checks and reports, it does not install packages.
set -eu
root=${HOST_ROOT:-/}
root=${root%/}
prefix=/opt/hyperlet
manifest=$prefix/.installed

systemctl_host() {
	if [ "${SYSTEMCTL:-}" = none ]; then
		echo "install.sh: (SYSTEMCTL=none) would run: systemctl $*" >&2
	elif [ -n "${HOST_ROOT:-}" ] && [ "$root" != "" ]; then
		command -v nsenter >/dev/null 2>&1 || { echo "install.sh: nsenter missing; run: systemctl $*" >&2; return 0; }
		nsenter -t 1 -m -u -i -n -p -- systemctl "$@"
	elif [ -d /run/systemd/system ]; then
		systemctl "$@"
	else
		echo "install.sh: no systemd here; run: systemctl $*" >&2
	fi
}

put() { # put SRC DEST MODE: copy atomically, record DEST
	mkdir -p "$root$(dirname "$2")"
	cp "$1" "$root$2.new"
	chmod "$3" "$root$2.new"
	mv "$root$2.new" "$root$2"
	grep -qx "$2" "$root$manifest" 2>/dev/null || echo "$2" >>"$root$manifest"
}

install() {
	payload=$(dirname "$0")
	if [ "${1:-}" = "--payload" ]; then payload=$2; fi
	for f in bin/hyperlet bin/hyperctl share/vmlinux share/initrd.img; do
		[ -f "$payload/$f" ] || { echo "install.sh: $payload/$f missing" >&2; exit 1; }
	done
	mkdir -p "$root$prefix"
	touch "$root$manifest"
	put "$payload/bin/hyperlet" $prefix/bin/hyperlet 0755
	put "$payload/bin/hyperctl" $prefix/bin/hyperctl 0755
	put "$payload/share/vmlinux" $prefix/share/vmlinux 0644
	put "$payload/share/initrd.img" $prefix/share/initrd.img 0644
	put "$(dirname "$0")/systemd/hyperlet.service" /etc/systemd/system/hyperlet.service 0644
	if [ ! -f "$root/etc/hyperlet/config.toml" ]; then
		mkdir -p "$root/etc/hyperlet"
		cat >"$root/etc/hyperlet/config.toml" <<TOML
# hyperlet configuration (see the project README for every key).
[vm]
kernel = "$prefix/share/vmlinux"
initrd = "$prefix/share/initrd.img"

[cni]
conf_dir = "/etc/cni/net.d"
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
TOML
	fi
	if ! PATH="$root/usr/bin:$root/usr/sbin:$root/bin:$root/sbin" command -v containerd >/dev/null 2>&1; then
		echo "install.sh: warning: containerd not found on the node: host-namespace pods (kube-proxy, CNI agents) will fail until it runs (host_runtime in the config)" >&2
	fi
	for dep in qemu-system-x86_64 mkfs.erofs; do
		if ! PATH="$root/usr/bin:$root/usr/sbin:$root/bin:$root/sbin" command -v $dep >/dev/null 2>&1; then
			echo "install.sh: warning: $dep not found on the node" >&2
		fi
	done
	systemctl_host daemon-reload
	systemctl_host enable --now hyperlet.service
	echo "install.sh: hyperlet installed in $root$prefix; point kubelet at --container-runtime-endpoint=unix:///run/hyperlet/hyperlet.sock"
}

uninstall() {
	systemctl_host disable --now hyperlet.service || true
	if [ -f "$root$manifest" ]; then
		while read -r f; do rm -f "$root$f"; done <"$root$manifest"
		rm -f "$root$manifest"
	fi
	rmdir "$root$prefix/bin" "$root$prefix/share" "$root$prefix" 2>/dev/null || true
	systemctl_host daemon-reload || true
	# VM templates are a cache held in RAM (tmpfs): never left behind.
	rm -rf "$root/dev/shm/hyperlet"
	if [ "${1:-}" = "--purge" ]; then
		rm -rf "$root/etc/hyperlet" "$root/var/lib/hyperlet"
	fi
	echo "install.sh: hyperlet removed from $root$prefix"
}

case "${1:-}" in
install) shift; install "$@" ;;
uninstall) shift; uninstall "$@" ;;
*) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
