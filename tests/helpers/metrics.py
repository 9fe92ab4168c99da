"""This process's metrics as a test reads them: one source's figures as a scrape would collect
them, or a family's samples summed over the whole registry (counters and histograms, which are
process-wide; compare before and after, other tests run in the same process)."""

from __future__ import annotations

from numfed.observability import metrics
from numfed.observability.metrics import MetricSource, RefreshedSource


async def figure(
    source: MetricSource, name: str, *, refresh: bool = True, **labels: str
) -> float | None:
    """The value of ``name``'s sample with ``labels`` from ``source`` (after it read its
    database, as on a scrape, unless ``refresh`` is false), or None when it has none."""
    if refresh and isinstance(source, RefreshedSource):
        await source.refresh_metrics()
    for family in source.collect_metrics():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def total(name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with ``labels`` in this process's registry."""
    return sum(
        s.value
        for family in metrics.REGISTRY.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
