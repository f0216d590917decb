#!/usr/bin/env bash
# gotools.sh — build the Go tools the test suite runs, once, from the modules pinned here
# (cached per go.mod/go.sum content, like tests/envtest):
#
#   gotools.sh install helm     the Helm CLI v3 (tests/tools/helm/go.mod), with its default
#                               Kubernetes version set to the client-go minor it is built
#                               with (as Helm's Makefile does), so `kubeVersion` constraints work
#   gotools.sh install health   tests/tools/health: Argo CD's Lua health checks under gopher-lua
#                               and kstatus verdicts (sigs.k8s.io/cli-utils status.Compute)
#   gotools.sh path TOOL        print the cached binary's path (installing it first if needed)
#
# Environment: XDG_CACHE_HOME (cache root, default ~/.cache), GO (go binary).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
readonly SCRIPT_DIR
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/atlas-access-operator/tools"

log() { printf 'gotools: %s\n' "$*" >&2; }
die() { printf 'gotools: error: %s\n' "$*" >&2; exit 1; }

find_go() {
  if [[ -n "${GO:-}" ]]; then command -v "$GO"; return; fi
  command -v go 2>/dev/null && return 0
  [[ -x /usr/local/go/bin/go ]] && { echo /usr/local/go/bin/go; return 0; }
  return 1
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
  else shasum -a 256 | cut -d' ' -f1; fi
}

# The stamp names everything that determines the binary's content.
stamp_of() { # tool
  local dir="$SCRIPT_DIR/$1"
  { echo "recipe=1"; cat "$dir"/go.mod "$dir"/go.sum; find "$dir" -maxdepth 1 -name '*.go' ! -name tools.go -print0 | sort -z | xargs -0r cat; } | sha256
}

bin_path() { # tool
  echo "$CACHE_ROOT/$1/$(stamp_of "$1" | cut -c1-16)/$1"
}

build() { # tool go out
  local tool="$1" go="$2" out="$3"
  (
    cd "$SCRIPT_DIR/$tool"
    export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"
    "$go" mod download
    case "$tool" in
      helm)
        local helm_version client_go major minor ldflags
        helm_version="$("$go" list -m -f '{{.Version}}' helm.sh/helm/v3)"
        client_go="$("$go" list -m -f '{{.Version}}' k8s.io/client-go)" # v0.37.0 -> Kubernetes 1.37
        minor="${client_go#v0.}"; minor="${minor%%.*}"
        major=1
        ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
          ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
        done
        log "building helm $helm_version (default Kubernetes version v$major.$minor.0)"
        "$go" build -trimpath -ldflags "$ldflags" -o "$out" helm.sh/helm/v3/cmd/helm
        ;;
      *)
        log "building $tool"
        "$go" build -trimpath -ldflags "-s -w" -o "$out" .
        ;;
    esac
  )
}

cmd_install() { # tool
  local tool="$1" bin go t0 tmp
  [[ -f "$SCRIPT_DIR/$tool/go.mod" ]] || die "unknown tool '$tool' (no $SCRIPT_DIR/$tool/go.mod)"
  bin="$(bin_path "$tool")"
  if [[ -x "$bin" ]]; then
    echo "$bin"
    return 0
  fi
  go="$(find_go)" || die "'go' not found (Go >= 1.26, see tests/envtest/README.md), or set GO=/path/to/go"
  mkdir -p "$(dirname "$bin")"
  exec 9>"$(dirname "$bin")/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if [[ -x "$bin" ]]; then echo "$bin"; return 0; fi
  t0="$SECONDS"
  tmp="$(mktemp "$(dirname "$bin")/.build.XXXXXX")"
  build "$tool" "$go" "$tmp" || { rm -f "$tmp"; die "building $tool failed (see the go output above)"; }
  mv -f "$tmp" "$bin"
  log "$tool installed into $(dirname "$bin") in $((SECONDS - t0))s"
  echo "$bin"
}

case "${1:-}" in
  install | path) [[ -n "${2:-}" ]] || die "usage: $0 install|path helm|health"; cmd_install "$2" ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
