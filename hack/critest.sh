#!/usr/bin/env bash
# Runs the CRI validation suite (critest) against a hyperlet daemon started
# for it: images from the offline harness registry (mirrors for
# registry.k8s.io, k8s.gcr.io and gcr.io), host pods on the harness's
# containerd, NRI on (critest's NRI specs get its socket).
#
#   CRITEST=/path/to/critest HARNESS=/path/to/harness hack/critest.sh [OUTDIR] [critest flags...]
#
# critest is not built here (it is not in the Go module proxy): bring your
# own binary. HARNESS is the offline CRI harness (registry.sh,
# containerd-baseline.sh, critest.sh). Needs root, `make build guest`.
# FOCUS/SKIP pass through to the harness. Last line: N passed, N failed, N skipped.
set -uo pipefail
: "${CRITEST:?set CRITEST=/path/to/critest}" "${HARNESS:?set HARNESS=/path/to/the harness}"
out=${1:-/tmp/hyperlet-critest/out}
shift || true
work=${HYPERLET_CRITEST_WORK:-/tmp/hyperlet-critest}
cd "$(dirname "$0")/.."
export CRITEST
"$HARNESS/registry.sh" >"$work.registry.log" 2>&1 || { echo "critest.sh: registry failed (see $work.registry.log)" >&2; exit 1; }
"$HARNESS/containerd-baseline.sh" start >"$work.containerd.log" 2>&1 || { echo "critest.sh: containerd failed" >&2; exit 1; }
cd_sock=$("$HARNESS/containerd-baseline.sh" endpoint)
cd_sock=${cd_sock#unix://}
rm -rf "$work/root" "$work/state" "$work/nri"
mkdir -p "$work/root" "$work/state" "$work/cni"
hack/setup-cni.sh "$work/cni" >/dev/null
cat >"$work/config.toml" <<TOML
[vm]
kernel = "$PWD/_output/vmlinux"
initrd = "$PWD/_output/initrd.img"
template_dir = "/dev/shm/hyperlet-critest"

[host_runtime]
enabled = true
endpoint = "$cd_sock"
handlers = ["runc"]

[nri]
enabled = true
socket_path = "$work/nri/nri.sock"
plugin_path = "$work/nri-plugins"
request_timeout = "10s"

[cni]
conf_dir = "$work/cni"
bin_dirs = ["/usr/lib/cni"]

[registry.mirrors."registry.k8s.io"]
endpoint = ["http://127.0.0.1:5000"]
[registry.mirrors."k8s.gcr.io"]
endpoint = ["http://127.0.0.1:5000"]
[registry.mirrors."gcr.io"]
endpoint = ["http://127.0.0.1:5000"]
TOML
sock="$work/hyperlet.sock"
_output/hyperlet --config "$work/config.toml" --root "$work/root" --state "$work/state" --socket "$sock" >"$work/hyperlet.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 60); do [ -S "$sock" ] && break; sleep 1; done
# The daemon builds its VM template and warm VM first.
sleep 10
"$HARNESS/critest.sh" "unix://$sock" "$out" -nri-socket="$work/nri/nri.sock" "$@" >"$work/critest.out" 2>&1
tail -1 "$work/critest.out"
