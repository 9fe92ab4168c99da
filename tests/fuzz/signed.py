"""Mutations of valid signed requests: a valid claim or event batch with one field changed,
then re-signed by the right carrier, re-signed by another carrier, or left with its old
signature; or an envelope whose type, key id or signatures are tampered with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE
from numfed.envelope import SigningKey, sign
from numfed.events import EVENT_BATCH_PAYLOAD_TYPE
from numfed.v1 import claim_pb2, events_pb2
from tests.fuzz.protofuzz import Hints, messages, one_field_changed

__all__ = ["envelope_paths", "hints", "resigned", "timestamps"]

PAYLOADS: dict[str, type[Message]] = {
    TENURE_CLAIM_PAYLOAD_TYPE: claim_pb2.TenureClaim,
    EVENT_BATCH_PAYLOAD_TYPE: events_pb2.EventBatch,
}


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    """Times around now and the demo's tenures, the limits of Timestamp, and far past them."""
    # Offsets from the clock at draw time: the strategy itself must not change as time passes.
    seconds = st.one_of(
        st.integers(-600, 600).map(lambda d: int(datetime.now(UTC).timestamp()) + d),
        st.integers(946_684_800, 1_893_456_000),  # 2000 .. 2030
        st.sampled_from([-62_135_596_800, 253_402_300_799, 0, -1]),  # 0001-01-01, 9999-12-31
        st.sampled_from([-62_135_596_801, 253_402_300_800, -(2**63), 2**63 - 1]),
    )
    nanos = st.one_of(st.just(0), st.integers(0, 999_999_999), st.sampled_from([-1, 10**9]))
    return st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), seconds, nanos)


def hints(pool: Sequence[str]) -> Hints:
    """Valid-looking values for fields the servers look into first."""
    payloads = st.one_of(
        messages(claim_pb2.TenureClaim.DESCRIPTOR, pool=pool, hints=_leaf_hints()),
        messages(events_pb2.EventBatch.DESCRIPTOR, pool=pool, hints=_leaf_hints()),
    ).map(lambda m: m.SerializeToString())
    return {
        **_leaf_hints(),
        "numfed.v1.Envelope.payload": payloads,
        "numfed.v1.Envelope.payload_type": st.sampled_from(sorted(PAYLOADS)),
    }


def _leaf_hints() -> Hints:
    ts = timestamps()
    return {
        f"numfed.v1.{m}.{f}": ts
        for m, f in [
            ("TenureClaim", "tenure_start"),
            ("TenureClaim", "issued_at"),
            ("TenureClaim", "expires_at"),
            ("LifecycleEvent", "at"),
            ("LifecycleEvent", "as_of"),
            ("LifecycleEvent", "tenure_start"),
            ("EventBatch", "issued_at"),
            ("CheckRecycledRequest", "since"),
            ("AnswerRecycledCheckRequest", "since"),
        ]
    } | {
        "numfed.v1.TenureClaim.claim_id": st.binary(min_size=16, max_size=16),
        "numfed.v1.LifecycleEvent.event_id": st.binary(min_size=16, max_size=16),
    }


def envelope_paths(msg: Message, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Paths (field names and list indexes) to every set Envelope inside ``msg``."""
    out: list[tuple[object, ...]] = []
    for f, value in msg.ListFields():
        if f.message_type is None:
            continue
        items = list(enumerate(value)) if f.is_repeated else [(None, value)]
        for i, item in items:
            path = (*prefix, f.name) if i is None else (*prefix, f.name, i)
            if isinstance(item, claim_pb2.Envelope):
                out.append(path)
            else:
                out += envelope_paths(item, path)
    return out


def _at(msg: Message, path: tuple[object, ...]) -> claim_pb2.Envelope:
    node: object = msg
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, str(step))  # type: ignore[index]
    assert isinstance(node, claim_pb2.Envelope)
    return node


@st.composite
def resigned(
    draw: st.DrawFn,
    seed: Message,
    signers: dict[str, SigningKey],
    own: str,
    pool: Sequence[str],
) -> Message:
    """``seed`` with one envelope inside it changed (one field of its payload, then signed
    again by ``own``, by another carrier, or not at all; or the envelope itself tampered)."""
    msg = type(seed)()
    msg.CopyFrom(seed)
    paths = envelope_paths(msg)
    env = _at(msg, draw(st.sampled_from(paths)))
    kind = PAYLOADS.get(env.payload_type)
    tamper = draw(
        st.sampled_from(["payload", "payload", "payload", "type", "keyid", "sigs", "swap"])
    )
    if tamper == "payload" and kind is not None:
        try:
            payload = kind.FromString(env.payload)
        except DecodeError:  # pragma: no cover - seeds are valid
            raise AssertionError("seed payload does not parse") from None
        changed = draw(one_field_changed(payload, pool=pool, hints=_leaf_hints()))
        body = changed.SerializeToString()
        signer = draw(st.sampled_from([own, own, *sorted(signers), ""]))
        if signer:
            env.CopyFrom(sign(env.payload_type, body, [signers[signer]]).to_proto())
        else:
            env.payload = body  # the old signature no longer covers it
    elif tamper == "type":
        env.payload_type = draw(
            st.sampled_from([*sorted(PAYLOADS), "", "application/vnd.numfed.trust-bundle+proto"])
        )
    elif tamper == "keyid":
        env.signatures[0].keyid = draw(st.sampled_from(["", "x", *pool]))
    elif tamper == "sigs":
        action = draw(st.sampled_from(["drop", "dup", "truncate", "zero"]))
        if action == "drop":
            del env.signatures[:]
        elif action == "dup":
            env.signatures.add().CopyFrom(env.signatures[0])
        elif action == "truncate":
            env.signatures[0].sig = env.signatures[0].sig[: draw(st.integers(0, 63))]
        else:
            env.signatures[0].sig = b"\x00" * len(env.signatures[0].sig)
    else:
        # a valid envelope of the other payload type, signed properly
        other = next(t for t in PAYLOADS if t != env.payload_type)
        env.CopyFrom(sign(other, env.payload, [signers[own]]).to_proto())
    return msg
