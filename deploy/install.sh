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
# checks and reports, it does not install them.
# The host runtime (pods that share the node's namespaces run in containerd):
# a node whose containerd serves /run/containerd/containerd.sock is reused as
# it is. On a node without one, install.sh runs the node's containerd binary
# (installing Debian's containerd and runc with apt-get first when it has
# none and HOST_RUNTIME_PACKAGES is not "no") as hyperlet-containerd.service,
# configured by /etc/hyperlet/containerd.toml, on /run/hyperlet/containerd/.
set -eu
root=${HOST_ROOT:-/}
root=${root%/}
prefix=/opt/hyperlet
manifest=$prefix/.installed
own_containerd_sock=/run/hyperlet/containerd/containerd.sock

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

on_host() { # on_host CMD...: run a command in the node's root
	if [ -n "$root" ]; then chroot "$root" "$@"; else "$@"; fi
}

has() { PATH="$root/usr/local/bin:$root/usr/local/sbin:$root/usr/bin:$root/usr/sbin:$root/bin:$root/sbin" command -v "$1" >/dev/null 2>&1; }

# host_runtime sets up the containerd that runs host-namespace pods and
# prints its socket: the node's own if it serves one, else the node's
# containerd binary as hyperlet-containerd.service (installed from Debian's
# packages if missing and allowed).
host_runtime() {
	if [ -S "$root/run/containerd/containerd.sock" ] || [ -f "$root/etc/systemd/system/multi-user.target.wants/containerd.service" ]; then
		echo "install.sh: host runtime: the node's containerd (/run/containerd/containerd.sock)" >&2
		if grep -qs '^[[:space:]]*disabled_plugins.*"cri"' "$root/etc/containerd/config.toml"; then
			echo "install.sh: warning: the node's containerd has its CRI plugin disabled (/etc/containerd/config.toml): host-namespace pods will fail" >&2
		fi
		echo /run/containerd/containerd.sock
		return
	fi
	if ! has containerd && [ "${HOST_RUNTIME_PACKAGES:-yes}" != no ] && has apt-get; then
		echo "install.sh: host runtime: installing Debian's containerd and runc" >&2
		on_host env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends containerd runc >&2 ||
			echo "install.sh: warning: apt-get install containerd runc failed" >&2
		if [ -S "$root/run/containerd/containerd.sock" ]; then
			echo /run/containerd/containerd.sock
			return
		fi
	fi
	if ! has containerd; then
		echo "install.sh: warning: no containerd on the node: host-namespace pods (kube-proxy, CNI agents) will fail until one runs (host_runtime in the config)" >&2
		echo /run/containerd/containerd.sock
		return
	fi
	cni_bin=/usr/lib/cni
	[ ! -d "$root/opt/cni/bin" ] || cni_bin=/opt/cni/bin
	mkdir -p "$root/etc/hyperlet"
	cat >"$root/etc/hyperlet/containerd.toml.new" <<TOML
# containerd for hyperlet's host runtime (written by install.sh).
version = 2
root = "/var/lib/hyperlet/containerd"
state = "/run/hyperlet/containerd"
[grpc]
  address = "$own_containerd_sock"
[ttrpc]
  address = "$own_containerd_sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$cni_bin"
  conf_dir = "/etc/cni/net.d"
TOML
	mv "$root/etc/hyperlet/containerd.toml.new" "$root/etc/hyperlet/containerd.toml"
	grep -qx /etc/hyperlet/containerd.toml "$root$manifest" 2>/dev/null || echo /etc/hyperlet/containerd.toml >>"$root$manifest"
	cbin=/usr/bin/containerd
	for d in /usr/local/bin /usr/local/sbin /usr/bin /usr/sbin /bin /sbin; do
		if [ -x "$root$d/containerd" ]; then cbin=$d/containerd; break; fi
	done
	sed "s#/usr/bin/containerd #$cbin #" "$(dirname "$0")/systemd/hyperlet-containerd.service" >"$root/etc/hyperlet/.unit.tmp"
	put "$root/etc/hyperlet/.unit.tmp" /etc/systemd/system/hyperlet-containerd.service 0644
	rm -f "$root/etc/hyperlet/.unit.tmp"
	echo "install.sh: host runtime: the node's containerd binary as hyperlet-containerd.service ($own_containerd_sock)" >&2
	echo "$own_containerd_sock"
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
	endpoint=$(host_runtime)
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

[host_runtime]
endpoint = "$endpoint"
TOML
	elif ! grep -q "$endpoint" "$root/etc/hyperlet/config.toml" && [ "$endpoint" = "$own_containerd_sock" ]; then
		echo "install.sh: note: the kept /etc/hyperlet/config.toml should set [host_runtime] endpoint = \"$endpoint\"" >&2
	fi
	for dep in qemu-system-x86_64 mkfs.erofs; do
		if ! PATH="$root/usr/bin:$root/usr/sbin:$root/bin:$root/sbin" command -v $dep >/dev/null 2>&1; then
			echo "install.sh: warning: $dep not found on the node" >&2
		fi
	done
	systemctl_host daemon-reload
	if [ -f "$root/etc/systemd/system/hyperlet-containerd.service" ]; then
		systemctl_host enable --now hyperlet-containerd.service
	fi
	systemctl_host enable --now hyperlet.service
	echo "install.sh: hyperlet installed in $root$prefix; point kubelet at --container-runtime-endpoint=unix:///run/hyperlet/hyperlet.sock"
}

uninstall() {
	systemctl_host disable --now hyperlet.service || true
	if [ -f "$root/etc/systemd/system/hyperlet-containerd.service" ]; then
		systemctl_host disable --now hyperlet-containerd.service || true
	fi
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
		rm -rf "$root/run/hyperlet/containerd"
	fi
	echo "install.sh: hyperlet removed from $root$prefix"
}

case "${1:-}" in
install) shift; install "$@" ;;
uninstall) shift; uninstall "$@" ;;
*) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
