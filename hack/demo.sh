#!/usr/bin/env bash
# Sets up and runs hyperlet with demo pods: a pod network (Debian's CNI
# plugins; a default bridge config if /etc/cni/net.d is empty), a local
# registry with the project's busybox image as docker.io/library/busybox,
# the node's containerd as hyperlet's host runtime (or, when none runs,
# Debian's containerd started with a configuration of the demo's own), and
# hyperlet with its own root, state and socket under _output/demo.
# Then it runs pods with hyperctl. hyperlet keeps running; the script prints
# how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/_output
demo=$out/demo
mkdir -p "$demo"

hack/setup-cni.sh /etc/cni/net.d
hack/registry.sh up

# The host runtime (pods that share the node's namespaces): the node's
# containerd, or the demo's own.
csock=/run/containerd/containerd.sock
if [ ! -S "$csock" ]; then
	mapfile -t cd_conf < <(go run ./hack/hostcontainerd -dir "$demo/containerd" -cni /etc/cni/net.d \
		-pause docker.io/hyperlet-test/pause:1 -mirror "docker.io=127.0.0.1:${REGISTRY_PORT:-5050}")
	csock=${cd_conf[1]}
	if [ -f "$demo/containerd.pid" ] && kill -0 "$(cat "$demo/containerd.pid")" 2>/dev/null; then
		echo "demo: containerd already running (pid $(cat "$demo/containerd.pid"))"
	else
		containerd --config "${cd_conf[0]}" >"$demo/containerd.log" 2>&1 &
		echo $! >"$demo/containerd.pid"
		echo "demo: started containerd for the host runtime (pid $!), log $demo/containerd.log"
	fi
	for _ in $(seq 100); do [ -S "$csock" ] && break; sleep 0.1; done
fi

metrics=127.0.0.1:${METRICS_PORT:-9338}
cat > "$demo/config.toml" <<TOML
metrics_address = "$metrics"

[vm]
kernel = "$out/vmlinux"
initrd = "$out/initrd.img"

[cni]
conf_dir = "/etc/cni/net.d"

[host_runtime]
endpoint = "$csock"

# Offline: docker.io images come from the local registry.
[registry.mirrors."docker.io"]
endpoint = ["http://127.0.0.1:${REGISTRY_PORT:-5050}"]
TOML
sock=$demo/hyperlet.sock
flags=(--config "$demo/config.toml" --root "$demo/root" --state "$demo/state" --socket "$sock")

if [ -f "$demo/hyperlet.pid" ] && kill -0 "$(cat "$demo/hyperlet.pid")" 2>/dev/null; then
	echo "demo: hyperlet already running (pid $(cat "$demo/hyperlet.pid"))"
else
	"$out/hyperlet" serve "${flags[@]}" >"$demo/hyperlet.log" 2>&1 &
	echo $! >"$demo/hyperlet.pid"
	echo "demo: started hyperlet (pid $!), log $demo/hyperlet.log"
fi
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
"$out/hyperlet" status "${flags[@]}"
export HYPERCTL_ENDPOINT=$sock
# The admin socket (usage, pause, pull progress) is in the state directory.
export HYPERCTL_ADMIN_SOCKET=$demo/state/admin.sock
ctl=$out/hyperctl

echo
echo "demo: \$ hyperctl run --rm busybox echo hi"
"$ctl" run --rm busybox echo hi

echo
echo "demo: \$ hyperctl run --rm busybox sh -c 'uname -r; id; exit 3'   (exit code propagates)"
set +e
"$ctl" run --rm -e GREETING=hello busybox sh -c 'echo "$GREETING from kernel $(uname -r) as $(id -un)"; exit 3'
echo "demo: exit code $?"
set -e

echo
echo "demo: \$ hyperctl run --rm --net host busybox sh -c 'ls /sys/class/net'   (host network: runs on the host runtime)"
"$ctl" run --rm --net host busybox sh -c 'ls /sys/class/net | tr "\n" " "; echo'

echo
echo "demo: \$ hyperctl run -d --name web -p 8080:80 busybox httpd -f -p 80 -h /etc"
"$ctl" rm -f web >/dev/null 2>&1 || true
"$ctl" run -d --name web -p 8080:80 busybox httpd -f -p 80 -h /etc >/dev/null
pod_ip=$("$ctl" inspect web | sed -n 's/^ *"ip": "\(.*\)",*$/\1/p' | head -1)
host_ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | grep -v "^10\.89\." | head -1)
for _ in $(seq 50); do curl -fsS "http://$pod_ip/hostname" >/dev/null 2>&1 && break; sleep 0.2; done
echo "demo: \$ curl http://$pod_ip/hostname      (pod IP)"
curl -fsS "http://$pod_ip/hostname"
echo "demo: \$ curl http://$host_ip:8080/hostname   (hostPort)"
curl -fsS "http://$host_ip:8080/hostname"
echo "demo: \$ hyperctl exec web sh -c 'hostname; ip -4 addr show eth0 | grep inet'"
"$ctl" exec web sh -c 'hostname; ip -4 addr show eth0 | grep inet'
"$ctl" ps
echo "demo: \$ hyperctl port-forward web 18081:80 &   (connects to localhost:80 inside the pod VM)"
"$ctl" port-forward web 18081:80 >/dev/null &
pf=$!
for _ in $(seq 50); do curl -fsS http://127.0.0.1:18081/hostname >/dev/null 2>&1 && break; sleep 0.2; done
echo "demo: \$ curl http://127.0.0.1:18081/hostname"
curl -fsS http://127.0.0.1:18081/hostname
kill $pf

echo
echo "demo: \$ hyperctl stats --no-stream; hyperctl pause web; hyperctl pods; hyperctl unpause web"
"$ctl" stats --no-stream
"$ctl" pause web >/dev/null
"$ctl" pods
"$ctl" unpause web >/dev/null
echo "demo: \$ curl -s http://$metrics/metrics | grep -E '^hyperlet_(pod_start_duration_seconds_count|pods|pod_vm_memory_pss_bytes)'"
curl -fsS "http://$metrics/metrics" | grep -E '^hyperlet_(pod_start_duration_seconds_count|pods|pod_vm_memory_pss_bytes)' || true

echo
echo "demo: hyperlet is serving the CRI on unix://$sock"
echo "demo: Prometheus metrics on http://$metrics/metrics"
echo "demo: try: HYPERCTL_ENDPOINT=$sock HYPERCTL_ADMIN_SOCKET=$demo/state/admin.sock $ctl run -it --rm busybox sh"
cleanup="$ctl rm -f web; kill $(cat "$demo/hyperlet.pid")"
[ ! -f "$demo/containerd.pid" ] || cleanup+="; kill $(cat "$demo/containerd.pid")"
echo "demo: clean up: $cleanup; hack/registry.sh stop"
