"""The Grafana dashboard is the one the panel definitions make, and reads only metrics that
docs/operations.md documents."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def ops_pictures() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ops_pictures", ROOT / "scripts" / "ops_pictures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_the_one_the_panels_make() -> None:
    made = ops_pictures().grafana_dashboard()
    assert json.loads((ROOT / "docs" / "grafana" / "numfed.json").read_text()) == made


def test_every_metric_on_the_dashboard_is_documented_and_pictured() -> None:
    module = ops_pictures()
    doc = (ROOT / "docs" / "operations.md").read_text()
    for panel in module.PANELS:
        assert f"img/ops/{panel.slug}.png" in doc
        assert (ROOT / "docs" / "img" / "ops" / f"{panel.slug}.png").read_bytes()[:4] == b"\x89PNG"
        for expr, _legend in panel.targets:
            for name in re.findall(r"\b(?:numfed|rpc)_[a-z_]+", expr):
                base = re.sub(r"_(bucket|count|sum|total)$", "", name)
                assert f"`{base}" in doc, f"{name} ({panel.slug}) is not in docs/operations.md"
