"""A serving process collects cyclic garbage less often than Python's default, and leaves the
objects alive at its start out of every collection (numfed.serving.tune_gc). Checked in a
process of its own, so that this test process keeps its own collector settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json
from numfed.serving import GC_THRESHOLDS, tune_gc
before = gc.get_threshold()
tune_gc()
print(json.dumps([before, gc.get_threshold(), GC_THRESHOLDS, gc.get_freeze_count()]))
"""


@pytest.mark.timeout(60)
def test_a_serving_process_collects_garbage_less_often_and_freezes_what_it_started_with() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=50, check=True
    ).stdout
    before, after, wanted, frozen = json.loads(out)
    assert before == [700, 10, 10]  # Python's default
    assert after == wanted and after[0] > 10 * before[0]
    assert frozen > 1000  # the modules' and descriptors' objects, out of every collection
