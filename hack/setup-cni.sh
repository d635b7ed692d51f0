#!/usr/bin/env bash
# Gives the node a pod network when it has none: Debian's CNI plugins
# (installed by hack/install-deps.sh) and, if the conf dir is empty, a
# bridge + host-local + portmap + loopback configuration. Never touches an
# existing configuration.
#   hack/setup-cni.sh [CONF_DIR]   (default /etc/cni/net.d)
set -euo pipefail
conf_dir=${1:-/etc/cni/net.d}
subnet=${HYPERLET_POD_SUBNET:-10.89.0.0/16}
mkdir -p "$conf_dir"
if compgen -G "$conf_dir/*.conf*" >/dev/null || compgen -G "$conf_dir/*.json" >/dev/null; then
	echo "setup-cni: $conf_dir already has a network configuration; leaving it"
	exit 0
fi
cat >"$conf_dir/10-hyperlet.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "hyperlet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "hyperlet0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$subnet"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
echo "setup-cni: wrote $conf_dir/10-hyperlet.conflist (bridge hyperlet0, $subnet)"
