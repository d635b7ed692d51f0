#!/usr/bin/env bash
# Installs the Debian packages hyperlet needs to build and run. Idempotent:
# apt runs only when something is missing.
set -euo pipefail

pkgs=(
	qemu-system-x86      # the hypervisor (microvm machine)
	linux-source-6.1     # guest kernel source
	gcc make flex bison bc libelf-dev libc6-dev xz-utils  # kernel build
	crun                 # OCI runtime inside the pod VM (copied into the initrd)
	runc                 # the host runtime's (containerd) and the benchmark peer's OCI runtime
	erofs-utils          # mkfs.erofs: read-only image disks
	busybox-static       # userland of the test/demo initrd
	cpio                 # checks the initrd format in tests
	protobuf-compiler    # make generate
	docker-registry      # a real registry for the image pull tests
	containernetworking-plugins  # CNI plugins for pod networks (bridge, host-local, portmap...)
	iptables             # used by the portmap plugin for hostPorts
	curl                 # scripts wait for the registry and demo pods
	containerd           # the host runtime (host-namespace pods) and the peer `make bench` measures against
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -q
	$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "install-deps: Go is required (https://go.dev/dl)" >&2; exit 1; }
