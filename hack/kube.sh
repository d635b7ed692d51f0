#!/usr/bin/env bash
# Builds Kubernetes' node and control-plane binaries from the k8s.io/kubernetes
# module (Go module proxy), and etcd from go.etcd.io/etcd/server/v3 at the
# version that release pins, and caches them per machine: kubelet for the
# standalone-kubelet test, all of them for the single-node cluster test.
# The release defaults to the one matching k8s.io/cri-api in go.mod
# (v0.N.M -> v1.N.M). kubernetes' go.mod points the k8s.io/* staging modules
# at ./staging, which the module archive lacks, so a throwaway module in the
# cache dir replaces them with the published k8s.io/* v0.N.M of the release.
#   hack/kube.sh [-v v1.N.M] [BINARY...]   (default: kubelet)
# BINARY is kubelet, kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy, kubectl or etcd. Env: KUBE_CACHE_DIR (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet/kube/<version>), CGO_ENABLED
# (default 0). Idempotent; the binaries' directory is the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

ver=v1.$(awk '$1 == "k8s.io/cri-api" { sub(/^v0\./, "", $2); print $2 }' go.mod)
if [ "${1:-}" = -v ]; then
	ver=$2
	shift 2
fi
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(kubelet)
staging=v0.${ver#v1.}
dir=${KUBE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet/kube/$ver}

# version runs a built binary's version command (which checks it runs).
version() {
	if [ "$(basename "$1")" = kubectl ]; then "$1" version --client; else "$1" --version; fi
}

missing=()
for b in "${bins[@]}"; do
	case $b in
	kubelet | kube-apiserver | kube-controller-manager | kube-scheduler | kube-proxy | kubectl | etcd) ;;
	*) echo "hack/kube.sh: unknown binary $b" >&2; exit 2 ;;
	esac
	if ! { [ -x "$dir/$b" ] && version "$dir/$b" >/dev/null 2>&1; }; then
		missing+=("$b")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
cd "$dir"
if [ ! -f go.sum ] || ! grep -q "^require k8s.io/kubernetes $ver\$" go.mod 2>/dev/null; then
	rm -f go.mod go.sum
	printf 'module hyperlet.local/kube-build\n' >go.mod
	echo "hack/kube.sh: downloading k8s.io/kubernetes@$ver" >&2
	src=$(go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[ -f "$src/go.mod" ] || { echo "hack/kube.sh: no source dir for k8s.io/kubernetes@$ver" >&2; exit 1; }
	etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$src/go.mod")
	{
		echo 'module hyperlet.local/kube-build'
		echo
		# Same go and godebug directives as kubernetes' own build (a dependency's are ignored).
		grep -E '^(go|godebug) ' "$src/go.mod"
		echo
		echo "require k8s.io/kubernetes $ver"
		echo "require go.etcd.io/etcd/server/v3 $etcd"
		echo
		echo 'replace ('
		sed -n 's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]\{1,\}\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\./staging/.*#\2#p' "$src/go.mod" |
			while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
		echo ')'
	} >go.mod
fi

ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld+=" -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$ver") -X $p.gitTreeState=clean"
done
for b in "${missing[@]}"; do
	pkg=k8s.io/kubernetes/cmd/$b
	[ "$b" != etcd ] || pkg=go.etcd.io/etcd/server/v3
	echo "hack/kube.sh: building $b $ver (staging modules at $staging) in $dir" >&2
	CGO_ENABLED=${CGO_ENABLED:-0} go build -mod=mod -trimpath -tags selinux,notest \
		-ldflags "$ld" -o "$b.tmp" "$pkg"
	mv "$b.tmp" "$b"
	version "./$b" >&2
done
echo "$dir"
