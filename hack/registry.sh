#!/usr/bin/env bash
# Runs Debian's docker-registry on 127.0.0.1 (port $REGISTRY_PORT, default
# 5050; storage under _output/registry) and pushes the project's own test
# images (hack/testimages). Idempotent.
#   hack/registry.sh [up|stop|status]
set -euo pipefail
cd "$(dirname "$0")/.."
port=${REGISTRY_PORT:-5050}
dir=$PWD/_output/registry
pidfile=$dir/registry.pid

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-up}" in
up)
	mkdir -p "$dir/data"
	if ! running; then
		cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
		docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
		echo $! >"$pidfile"
		for _ in $(seq 100); do
			curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
			sleep 0.1
		done
		echo "registry: serving on 127.0.0.1:$port (pid $(cat "$pidfile"))"
	fi
	go run ./hack/testimages -registry "127.0.0.1:$port"
	;;
stop)
	if running; then kill "$(cat "$pidfile")"; fi
	rm -f "$pidfile"
	;;
status)
	if running; then echo "registry: running on 127.0.0.1:$port"; else echo "registry: stopped"; exit 1; fi
	;;
*)
	echo "usage: $0 [up|stop|status]" >&2
	exit 2
	;;
esac
