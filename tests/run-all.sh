#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit and integration tests against the built-in
# Atlas simulator, the CRD/status/RBAC/end-to-end tests against a real kube-apiserver
# (envtest: etcd + kube-apiserver built from Go modules, cached after the first build), the
# chart under the real Helm CLI and Argo CD / kstatus health verdicts (Go tools, cached), and
# the Helm chart structure tests (Python). Works on a fresh machine with Rust, Go and Python 3.
#
# To use another cluster instead of envtest, export KUBECONFIG (and, for the least-privilege
# tests, ENVTEST_UNPRIVILEGED_KUBECONFIG) and set USE_EXISTING_CLUSTER=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${USE_EXISTING_CLUSTER:-0}" != 1 ]]; then
  tests/envtest/envtest.sh install
  export ENVTEST_STATE_DIR="${ENVTEST_STATE_DIR:-$(mktemp -d)/envtest}"
  trap 'tests/envtest/envtest.sh down >/dev/null 2>&1 || true' EXIT
  tests/envtest/envtest.sh up >/dev/null
  eval "$(tests/envtest/envtest.sh env)"
  echo "envtest: KUBECONFIG=$KUBECONFIG"
fi

# The Go tools the suite runs: the Helm CLI (v3) and the health-verdict helper (gopher-lua +
# kstatus), built once from tests/tools/*/go.mod and cached (first build: ~3 min on 2 cores).
tests/tools/gotools.sh install helm >/dev/null
tests/tools/gotools.sh install health >/dev/null

cargo test --all-targets
bash tests/helm/run.sh
