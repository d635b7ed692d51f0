#!/usr/bin/env bash
# Builds gVisor's runsc and its containerd shim from the gvisor.dev/gvisor Go
# module (Go module proxy) for `make bench`, which runs them as a second
# peer beside runc: a RuntimeClass handler "runsc" of the bench's containerd,
# systrap platform (no KVM needed). Cached per machine and version.
#   hack/gvisor.sh            prints the binaries' directory (last line)
# Env: GVISOR_VERSION (a pseudo-version of gvisor.dev/gvisor), GVISOR_CACHE_DIR
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet/gvisor/<version>).
#
# Three things make them run here, each checked below:
# - runsc is built with CGO_ENABLED=0. A cgo build is dynamically linked, and
#   its sandbox, once chrooted into an empty root, cannot exec /proc/self/exe
#   (no ELF interpreter there: "error executing umounter").
# - the shim lowers its own oom_score_adj to -999 and fails without
#   CAP_SYS_RESOURCE (some container hosts drop it from the bounding set).
#   The build makes a permission error there non-fatal; elsewhere the shim is
#   unchanged.
# - this shim speaks containerd 2's bootstrap protocol (`start` prints JSON);
#   Debian's containerd 1.6 wants a bare address. A wrapper named
#   containerd-shim-runsc-v1 translates `start`'s output and execs the real
#   shim for everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

ver=${GVISOR_VERSION:-v0.0.0-20260905035102-160fafc42237}
dir=${GVISOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperlet/gvisor/$ver}
if [ -x "$dir/runsc" ] && [ -x "$dir/containerd-shim-runsc-v1.real" ] && [ -x "$dir/containerd-shim-runsc-v1" ] &&
	"$dir/runsc" --version >/dev/null 2>&1; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
echo "hack/gvisor.sh: building runsc $ver (about 4 minutes on 2 cores)" >&2
GOBIN=$dir CGO_ENABLED=0 go install "gvisor.dev/gvisor/runsc@$ver"

src=$(go mod download -json "gvisor.dev/gvisor@$ver" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -f "$src/go.mod" ] || { echo "hack/gvisor.sh: no source dir for gvisor.dev/gvisor@$ver" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
mgr=$work/pkg/shim/v1/manager.go
needle='return shim.BootstrapParams{}, fmt.Errorf("failed to set OOM Score on shim: %w", err)'
grep -qF "$needle" "$mgr" || { echo "hack/gvisor.sh: $mgr no longer has the OOM score call this build relaxes" >&2; exit 1; }
# The replacement logs nothing: containerd 1.6 reads start's whole output.
sed -i "s|$needle|if !os.IsPermission(err) { $needle }|" "$mgr"
echo "hack/gvisor.sh: building containerd-shim-runsc-v1 $ver" >&2
(cd "$work" && CGO_ENABLED=0 go build -o "$dir/containerd-shim-runsc-v1.real" ./shim)

cat >"$dir/containerd-shim-runsc-v1" <<'SH'
#!/bin/sh
# containerd 1.6 reads `start`'s output as a bare shim address; this shim
# prints containerd 2's bootstrap JSON. Written by hack/gvisor.sh.
real="$(dirname "$0")/containerd-shim-runsc-v1.real"
for a; do last=$a; done
[ "$last" = start ] || exec "$real" "$@"
out=$("$real" "$@") || { rc=$?; printf '%s' "$out"; exit $rc; }
case $out in
'{'*) printf '%s' "$out" | sed -n 's/.*"address":"\([^"]*\)".*/\1/p' | tr -d '\n' ;;
*) printf '%s' "$out" ;;
esac
SH
chmod 755 "$dir/containerd-shim-runsc-v1"
"$dir/runsc" --version >&2
echo "$dir"
