#!/usr/bin/env bash
# Starts hyperlet (own root, state and socket under _output/demo, so it does
# not touch a system install), shows its CRI status, and runs a command in a
# pod VM. hyperlet keeps running; the script prints how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/_output
demo=$out/demo
mkdir -p "$demo"

# The demo initrd carries busybox so there is something to run in the VM.
cat > "$demo/config.toml" <<TOML
[vm]
kernel = "$out/vmlinux"
initrd = "$out/initrd-test.img"
TOML
flags=(--config "$demo/config.toml" --root "$demo/root" --state "$demo/state" --socket "$demo/hyperlet.sock")

if [ -f "$demo/hyperlet.pid" ] && kill -0 "$(cat "$demo/hyperlet.pid")" 2>/dev/null; then
	echo "demo: hyperlet already running (pid $(cat "$demo/hyperlet.pid"))"
else
	"$out/hyperlet" serve "${flags[@]}" >"$demo/hyperlet.log" 2>&1 &
	echo $! >"$demo/hyperlet.pid"
	echo "demo: started hyperlet (pid $!), log $demo/hyperlet.log"
fi
for _ in $(seq 100); do [ -S "$demo/hyperlet.sock" ] && break; sleep 0.1; done
sleep 0.5 # let the accelerator probe finish
"$out/hyperlet" status "${flags[@]}"

echo
echo "demo: booting a pod VM and running a command in it"
"$out/hyperlet" vm-run "${flags[@]}" -- sh -c 'echo "hello from $(uname -sr) in a hyperlet pod VM"; echo "memory: $(head -1 /proc/meminfo)"; echo "processes: $(ls -d /proc/[0-9]* | wc -l)"'

echo
echo "demo: hyperlet is serving the CRI on unix://$demo/hyperlet.sock"
echo "demo: stop it with: kill $(cat "$demo/hyperlet.pid")"
