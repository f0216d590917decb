"""Lets the tests import deploy/render_manifests.py, the one place the chart is rendered."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
