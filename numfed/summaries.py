"""How much may be said about the bindings of one claim: merged summaries, capped.

A platform answers each claim with masked summaries (invariant 2). Identical summaries (same
platform, kind and masked label, and no ``binding_ref``) are one summary with their counts
added; at most :data:`MAX_SUMMARIES_PER_CLAIM` are listed, largest counts first, and at most
:data:`MAX_SUMMARY_BYTES` of them in all; ``omitted_bindings`` counts the bindings of the
summaries left out. So one claim's answer stays small whatever the number carries (a number
marked by 90,000 users), a whole batch of answers fits one message, and a release's stored
first result, replayed on every retry, is as small as its first answer. Platforms bound their
answers with :func:`bound`; the gateway bounds what it passes on the same way, whatever a
platform sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from numfed.v1 import binding_pb2

__all__ = ["MAX_SUMMARIES_PER_CLAIM", "MAX_SUMMARY_BYTES", "bound"]

MAX_SUMMARIES_PER_CLAIM = 100
"""Most summaries listed for one claim; the rest are counted in ``omitted_bindings``."""
MAX_SUMMARY_BYTES = 8000
"""Most bytes the summaries of one claim take on the wire. With the item's other fields (at
most about 2 KiB, an error status included) a batch of ``MAX_BATCH_ITEMS`` answers stays under
the 4 MiB message cap (``numfed.rpc.MAX_MESSAGE_BYTES``) with room to spare."""
MAX_OMITTED = 2**32 - 1
"""``omitted_bindings`` and ``count`` are uint32."""

Summary = binding_pb2.BindingSummary


def _wire_size(s: Summary) -> int:
    """Bytes one summary takes as an entry of a repeated field: tag, length and body."""
    body = s.ByteSize()
    return 1 + max((body.bit_length() + 6) // 7, 1) + body


def bound(summaries: Iterable[Summary], omitted: int = 0) -> tuple[list[Summary], int]:
    """Merge identical summaries and cap them: (summaries to list, bindings omitted).

    ``omitted`` is what was omitted already (a platform's own count, passed on). A summary
    with a ``binding_ref`` stands for one selectable binding and is never merged. Listed
    summaries keep their first order among equal counts; applying :func:`bound` again to its
    own result changes nothing.

    Rules: PLAT-ANS-6 (identical summaries merged), PLAT-ANS-7 (at most 100 and 8,000 bytes, the
    rest counted in ``omitted_bindings``).
    """
    merged: dict[tuple[str, int, str], Summary] = {}
    alone: list[Summary] = []
    for s in summaries:
        count = max(s.count, 1)
        if s.binding_ref:
            alone.append(_copy(s, count))
            continue
        key = (s.platform_id, s.kind, s.masked_label)
        seen = merged.get(key)
        if seen is None:
            merged[key] = _copy(s, count)
        else:
            seen.count = min(seen.count + count, MAX_OMITTED)
    ordered = sorted([*merged.values(), *alone], key=lambda s: -s.count)
    listed: list[Summary] = []
    used = 0
    for s in ordered:
        size = _wire_size(s)
        if len(listed) == MAX_SUMMARIES_PER_CLAIM or used + size > MAX_SUMMARY_BYTES:
            break
        listed.append(s)
        used += size
    rest = sum(s.count for s in ordered[len(listed) :])
    return listed, min(omitted + rest, MAX_OMITTED)


def _copy(s: Summary, count: int) -> Summary:
    return Summary(
        platform_id=s.platform_id,
        kind=s.kind,
        masked_label=s.masked_label,
        count=count,
        binding_ref=s.binding_ref,
    )
