#!/usr/bin/env bash
# Builds kubelet from the k8s.io/kubernetes module (Go module proxy) and caches
# it, for the standalone-kubelet end-to-end test. The Kubernetes release
# defaults to the one matching k8s.io/cri-api in go.mod (v0.N.M -> v1.N.M).
# kubernetes' go.mod points the k8s.io/* staging modules at ./staging, which
# the module archive lacks, so a throwaway module in the cache dir replaces
# them with the published k8s.io/* v0.N.M of the same release.
#   hack/kubelet.sh [v1.N.M]
# Env: KUBELET_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet/kubelet/<version>),
#      CGO_ENABLED (default 0). Idempotent; the binary's path is the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

ver=${1:-v1.$(awk '$1 == "k8s.io/cri-api" { sub(/^v0\./, "", $2); print $2 }' go.mod)}
staging=v0.${ver#v1.}
dir=${KUBELET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet/kubelet/$ver}
bin=$dir/kubelet
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

mkdir -p "$dir"
cd "$dir"
rm -f go.mod go.sum
printf 'module hyperlet.local/kubelet-build\n' >go.mod
echo "hack/kubelet.sh: downloading k8s.io/kubernetes@$ver" >&2
src=$(go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -f "$src/go.mod" ] || { echo "hack/kubelet.sh: no source dir for k8s.io/kubernetes@$ver" >&2; exit 1; }
{
	echo 'module hyperlet.local/kubelet-build'
	echo
	# Same go and godebug directives as kubernetes' own build (a dependency's are ignored).
	grep -E '^(go|godebug) ' "$src/go.mod"
	echo
	echo "require k8s.io/kubernetes $ver"
	echo
	echo 'replace ('
	sed -n 's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]\{1,\}\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\./staging/.*#\2#p' "$src/go.mod" |
		while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
	echo ')'
} >go.mod

echo "hack/kubelet.sh: building kubelet $ver (staging modules at $staging) in $dir" >&2
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld+=" -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$ver") -X $p.gitTreeState=clean"
done
CGO_ENABLED=${CGO_ENABLED:-0} go build -mod=mod -trimpath -tags selinux,notest \
	-ldflags "$ld" -o "$bin.tmp" k8s.io/kubernetes/cmd/kubelet
mv "$bin.tmp" "$bin"
"$bin" --version >&2
echo "$bin"
