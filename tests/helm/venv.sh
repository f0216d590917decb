#!/usr/bin/env bash
# Prints the path of a Python with tests/helm/requirements.txt installed, creating or updating a
# cached virtualenv first (reinstalls only when requirements.txt changes). Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
requirements="$here/requirements.txt"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/atlas-access-operator/venv"
stamp="$venv/.requirements.sha256"
wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating virtualenv $venv" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "installing $requirements into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$wanted" > "$stamp"
fi
echo "$venv/bin/python"
