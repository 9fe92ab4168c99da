"""One claim to many platforms: serialised once, answered into one wait.

A query goes to every platform (or those named), each in that platform's next batch. Its claim
is serialised once per query, not once per platform: a :class:`Piece` holds the bytes of a
one-item batch request, and a batch's request is the concatenation of its items' pieces
(:func:`batch_request`; serialised protobuf messages concatenate into their merge, and a
repeated field's entries append). A release job's claim is serialised once per dispatch round
the same way, whichever platforms its tasks go to.

The platforms' answers go into one :class:`Fan` per query, a slot per platform: a slot settles
synchronously when its batch answers, with no future or callback per platform, and the fan's
one future resolves when the last slot has. Most platforms have nothing for most numbers and
say so by leaving the claim out of a sparse answer; such an answer is :data:`NOTHING`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from numfed.v1 import claim_pb2, platform_pb2

__all__ = [
    "NOTHING",
    "SPARSE_ANSWERS",
    "Fan",
    "Piece",
    "batch_request",
    "found_nothing",
    "query_piece",
    "release_piece",
]

NOTHING: Final = platform_pb2.QueryItemResult()
"""A claim a platform accepted and found nothing for, left out of its sparse answer (status OK,
no bindings). Shared: never changed."""

SPARSE_ANSWERS: Final = platform_pb2.BatchQueryBindingsRequest(
    sparse_answers=True
).SerializeToString()
"""Appended to a query batch's request: answer only the claims found or refused."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One item of a batch request, serialised: a one-item ``Batch*BindingsRequest``."""

    item_id: str
    raw: bytes

    @property
    def size(self) -> int:
        """Its bytes in a batch's request."""
        return len(self.raw)


def query_piece(item_id: str, claim: claim_pb2.Envelope) -> Piece:
    """A query item carrying ``claim``, serialised once for every platform's batch."""
    item = platform_pb2.QueryItem(item_id=item_id, claim=claim)
    request = platform_pb2.BatchQueryBindingsRequest(items=[item])
    return Piece(item_id, request.SerializeToString())


def release_piece(item_id: str, claim: bytes) -> Piece:
    """A release item carrying the serialised ``claim`` (an Envelope), for every platform."""
    item = platform_pb2.ReleaseItem(item_id=item_id, claim=claim_pb2.Envelope.FromString(claim))
    request = platform_pb2.BatchReleaseBindingsRequest(items=[item])
    return Piece(item_id, request.SerializeToString())


def batch_request(pieces: Sequence[Piece], *tail: bytes) -> bytes:
    """The serialised request carrying ``pieces`` in order, and the fields in ``tail``."""
    return b"".join([*(p.raw for p in pieces), *tail])


def found_nothing(answer: platform_pb2.QueryItemResult) -> bool:
    """Whether ``answer`` says the claim was accepted and nothing is bound (outcome NONE)."""
    return answer is NOTHING or (
        answer.status.code == 0 and not answer.bindings and not answer.omitted_bindings
    )


Answer = platform_pb2.QueryItemResult | BaseException
"""What one platform's part of a query came to: its answer, or why it has none."""


class Fan:
    """The answers of the platforms one query went to (slot ``i``: the ``i``-th), one wait."""

    __slots__ = ("_done", "_pending", "answers")

    def __init__(self, n: int) -> None:
        self.answers: list[Answer | None] = [None] * n
        """Slot by slot: the answer, the reason it failed, or None while it is pending."""
        self._pending = n
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def slot(self, i: int) -> Slot:
        """The waiter of the ``i``-th platform's request (:class:`gateway.batcher.Waiter`)."""
        return Slot(self, i)

    def _settle(self, i: int, answer: Answer) -> None:
        if self.answers[i] is not None:
            return
        self.answers[i] = answer
        self._pending -= 1
        if self._pending == 0 and not self._done.done():
            self._done.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return when every slot has settled or ``timeout`` seconds have passed."""
        if self._pending == 0:
            return
        done = self._done

        def expired() -> None:
            if not done.done():
                done.set_result(None)

        timer = asyncio.get_running_loop().call_later(timeout, expired)
        try:
            await done
        finally:
            timer.cancel()


class Slot:
    """One platform's request in a :class:`Fan`: settles its slot, nothing else."""

    __slots__ = ("_fan", "_i", "_over")

    def __init__(self, fan: Fan, i: int) -> None:
        self._fan = fan
        self._i = i
        self._over = False

    def done(self) -> bool:
        return self._over

    def set_result(self, result: platform_pb2.QueryItemResult, /) -> None:
        self._over = True
        self._fan._settle(self._i, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._over = True
        self._fan._settle(self._i, exception)

    def cancel(self) -> bool:
        """Nobody waits for this answer any more (the query timed out or went away)."""
        was = self._over
        self._over = True
        return not was
