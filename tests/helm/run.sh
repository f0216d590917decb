#!/usr/bin/env bash
# The Helm chart tests: lint, renders of every documented values set, drift of deploy/manifests/
# and tests/helm/rendered/. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="$(bash tests/helm/venv.sh)"
exec "$python" -m pytest -q tests/helm "$@"
