#!/usr/bin/env bash
# Regenerates deploy/manifests/ and tests/helm/rendered/ from the Helm chart (see render_manifests.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(bash tests/helm/venv.sh)"
exec "$python" deploy/render_manifests.py
