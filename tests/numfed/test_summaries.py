"""One claim's answer is bounded: identical summaries merged, at most 100 listed, rest counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from numfed.config import MAX_BATCH_ITEMS
from numfed.errors import Unavailable
from numfed.rpc import MAX_ERROR_TEXT, MAX_MESSAGE_BYTES, error_status, ok_status
from numfed.summaries import MAX_SUMMARIES_PER_CLAIM, MAX_SUMMARY_BYTES, bound
from numfed.v1 import binding_pb2, platform_pb2

LABEL = binding_pb2.BINDING_KIND_LABEL
LOGIN = binding_pb2.BINDING_KIND_ACCOUNT_LOGIN


def summary(
    label: str, count: int = 1, kind: binding_pb2.BindingKind.ValueType = LABEL, ref: str = ""
) -> binding_pb2.BindingSummary:
    return binding_pb2.BindingSummary(
        platform_id="labels",
        kind=kind,
        masked_label=label,
        count=count,
        binding_ref=ref,
    )


def test_identical_summaries_are_one_with_their_counts_added() -> None:
    listed, omitted = bound(
        [summary("a"), summary("b"), summary("a", 2), summary("a", kind=LOGIN), summary("b")]
    )
    assert [(s.masked_label, s.kind, s.count) for s in listed] == [
        ("a", LABEL, 3),
        ("b", LABEL, 2),
        ("a", LOGIN, 1),
    ]
    assert omitted == 0


def test_summaries_with_refs_are_never_merged() -> None:
    listed, _ = bound([summary("a", ref="b_1"), summary("a", ref="b_2")])
    assert [s.binding_ref for s in listed] == ["b_1", "b_2"]


def test_at_most_100_are_listed_largest_counts_first_and_the_rest_counted() -> None:
    many = [summary(f"label {i}", count=1 + i % 7) for i in range(1000)]
    listed, omitted = bound(many, 5)
    assert len(listed) == MAX_SUMMARIES_PER_CLAIM
    assert all(s.count == 7 for s in listed)  # 142 summaries have the largest count
    assert sum(s.count for s in listed) + omitted == sum(s.count for s in many) + 5


def test_long_labels_are_capped_by_bytes() -> None:
    listed, omitted = bound([summary("x" * 500 + str(i)) for i in range(100)])
    assert sum(s.ByteSize() + 3 for s in listed) <= MAX_SUMMARY_BYTES
    assert len(listed) < 100 and omitted == 100 - len(listed)


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c" * 200]), st.integers(0, 10**6), st.booleans()),
        max_size=300,
    ),
    st.integers(0, 10**9),
)
def test_bounding_keeps_every_binding_counted_and_is_stable(
    raw: list[tuple[str, int, bool]], omitted: int
) -> None:
    summaries = [
        summary(label, count, ref=f"r{i}" if ref else "")
        for i, (label, count, ref) in enumerate(raw)
    ]
    listed, left = bound(summaries, omitted)
    total = sum(max(c, 1) for _label, c, _ref in raw) + omitted
    assert sum(s.count for s in listed) + left == total
    assert len(listed) <= MAX_SUMMARIES_PER_CLAIM
    assert bound(listed, left) == (listed, left)


def test_counts_saturate_at_uint32() -> None:
    listed, omitted = bound([summary("a", 2**32 - 1), summary("a", 5)], 2**32 - 1)
    assert [s.count for s in listed] == [2**32 - 1] and omitted == 2**32 - 1


def test_a_whole_batch_of_bounded_answers_fits_one_message() -> None:
    """The arithmetic behind MAX_SUMMARY_BYTES: 500 answers, each as large as an answer may be
    (as many summaries as may be listed, or the longest error status), stay under the cap."""
    listed, _ = bound([summary("x" * 60 + str(i), ref="b_" + "f" * 24) for i in range(200)])
    refused = error_status(
        Unavailable("PLATFORM_UNAVAILABLE", "é" * MAX_ERROR_TEXT, metadata={"k": "é" * 400})
    )
    item_id = "f" * 32
    largest = max(
        [
            platform_pb2.ReleaseItemResult(
                item_id=item_id, status=ok_status(), released=listed, omitted_bindings=2**32 - 1
            ),
            platform_pb2.ReleaseItemResult(item_id=item_id, status=refused, replayed=True),
        ],
        key=lambda r: r.ByteSize(),
    )
    answer = platform_pb2.BatchReleaseBindingsResponse(results=[largest] * MAX_BATCH_ITEMS)
    assert answer.ByteSize() < MAX_MESSAGE_BYTES - 64 * 1024
