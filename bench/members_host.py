"""Runs a federation's carriers and platforms in one process, so that a benchmark can measure
the gateway's own process alone. ``python -m bench.members_host FEDERATION_DIR [PLATFORM ...]``:
with platform ids given, it hosts only those platforms (``carriers`` stands for the carriers), so
that a benchmark can give each platform a process of its own. It collects garbage as a serve
command does (``numfed.serving.tune_gc``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from carrier_adapters.base import start_carrier
from numfed.config import load_carrier_config, load_platform_config
from numfed.serving import tune_gc
from platform_stubs.reference import start_platform


async def main(carriers: list[Path], platforms: list[Path]) -> None:
    handles: list[object] = []
    for cfg in carriers:
        handles.append(await start_carrier(load_carrier_config(cfg)))
    for cfg in platforms:
        handles.append(await start_platform(load_platform_config(cfg)))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    tune_gc()
    root, only = Path(sys.argv[1]), sys.argv[2:]
    if only:
        carriers = sorted(root.glob("carrier-*.toml")) if "carriers" in only else []
        platforms = [root / f"platform-{p}.toml" for p in only if p != "carriers"]
        asyncio.run(main(carriers, platforms))
    else:
        carriers = sorted(root.glob("carrier-*.toml"))
        asyncio.run(main(carriers, sorted(root.glob("platform-*.toml"))))
