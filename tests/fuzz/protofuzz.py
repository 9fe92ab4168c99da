"""Hypothesis strategies for protobuf fuzzing: messages built from their descriptors, and
mutations of serialised bytes (bit flips, truncation, splices, unknown fields).

The message strategy covers every field kind: strings (unicode, empty, huge, and values from a
pool that looks valid to the servers, so examples get past the first check), bytes (random, or
a serialised nested message where an envelope's payload is expected), integers at their limits,
enums including values no enum names, repeated fields, nested messages and oneofs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

__all__ = [
    "INT_RANGES",
    "encode_varint",
    "message_bytes",
    "messages",
    "mutated",
    "one_field_changed",
]

FD = _d.FieldDescriptor

INT_RANGES: dict[int, tuple[int, int]] = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}

HUGE = 300_000
"""Length of a "huge" string or bytes value: far past any field's limit, well inside the 4 MiB
message limit (over that limit gRPC itself refuses the call before any numfed code runs)."""

Hints = Mapping[str, st.SearchStrategy[object]]
"""Extra strategies by field full name (e.g. ``numfed.v1.Envelope.payload``), mixed in with
the generic ones so that generated values sometimes look valid."""


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted(v for v in {lo, hi, 0, 1, -1, lo + 1, hi - 1, 2**31, 2**32} if lo <= v <= hi)
    small = st.integers(max(lo, -1000), min(hi, 1000))
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), small)


def _texts(pool: Sequence[str]) -> st.SearchStrategy[str]:
    parts: list[st.SearchStrategy[str]] = [
        st.just(""),
        st.text(max_size=40),
        st.text(st.characters(codec="utf-8"), max_size=12),
        st.integers(1, HUGE).map(lambda n: "9" * n),
        st.integers(1, 4).map(lambda n: "\U0001f4f1" * (n * 40_000)),
        st.sampled_from(["\x00", "../../etc/passwd", "%s%n", "' OR 1=1 --", "+", "+86", "Ｏ"]),
    ]
    if pool:
        parts.append(st.sampled_from(list(pool)))
        parts.append(st.sampled_from(list(pool)))
    return st.one_of(parts)


MANY_BYTES = 1_000_000
"""Most bytes one repeated field of copies may take: copies of copies of huge values would
otherwise multiply into gigabytes."""


def _size(value: object) -> int:
    if isinstance(value, str | bytes):
        return 4 * len(value)
    if isinstance(value, Message):
        return value.ByteSize()
    return 10


def _many(value: st.SearchStrategy[object]) -> st.SearchStrategy[list[object]]:
    """Hundreds of copies of one value (drawing hundreds of values would exhaust hypothesis),
    fewer if the value is large."""

    def copies(t: tuple[object, int]) -> list[object]:
        return [t[0]] * max(1, min(t[1], MANY_BYTES // max(1, _size(t[0]))))

    return st.tuples(value, st.integers(100, 600)).map(copies)


def _bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.binary(max_size=64),
        st.integers(1, HUGE).map(lambda n: b"\xff" * n),
        st.sampled_from([b"\x00" * 16, b"\xff" * 16, b"\x00" * 15, b"\x00" * 17]),
    )


def _scalar(field: FD, pool: Sequence[str]) -> st.SearchStrategy[object]:
    t = field.type
    if t in INT_RANGES:
        return _ints(*INT_RANGES[t])
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(width=32 if t == FD.TYPE_FLOAT else 64)
    if t == FD.TYPE_STRING:
        return _texts(pool)
    if t == FD.TYPE_BYTES:
        return _bytes()
    if t == FD.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [v.number for v in field.enum_type.values]
        # proto3 enums are open: any int32 goes over the wire, named or not.
        return st.one_of(st.sampled_from(numbers), _ints(-(2**31), 2**31 - 1))
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def _value(
    field: FD,
    depth: int,
    pool: Sequence[str],
    hints: Hints,
    build: Callable[[_d.Descriptor, int], st.SearchStrategy[Message]],
) -> st.SearchStrategy[object]:
    if field.type == FD.TYPE_MESSAGE:
        assert field.message_type is not None
        base: st.SearchStrategy[object] = build(field.message_type, depth + 1)
    else:
        base = _scalar(field, pool)
    hint = hints.get(field.full_name)
    return base if hint is None else st.one_of(base, hint)


def messages(
    descriptor: _d.Descriptor,
    *,
    pool: Sequence[str] = (),
    hints: Hints | None = None,
    max_depth: int = 4,
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with any subset of fields set.

    Nested messages are built from their own descriptors, well-known types (Timestamp, Any)
    included. Oneofs get at most one member. Repeated fields hold up to three items, or now and
    then hundreds of copies of one.
    """
    hints = dict(hints or {})

    def build(desc: _d.Descriptor, depth: int) -> st.SearchStrategy[Message]:
        klass = message_factory.GetMessageClass(desc)

        @st.composite
        def draw_message(draw: st.DrawFn) -> Message:
            msg = klass()
            if depth > max_depth:
                return msg
            fields = list(desc.fields)
            for oneof in desc.oneofs:
                members = list(oneof.fields)
                keep = draw(st.one_of(st.none(), st.sampled_from(members)))
                fields = [f for f in fields if f not in members or f is keep]
            for f in fields:
                if not draw(st.booleans()):
                    continue
                value = _value(f, depth, pool, hints, build)
                if f.is_repeated:
                    items = draw(st.one_of(st.lists(value, max_size=3), _many(value)))
                    container = getattr(msg, f.name)
                    if f.type == FD.TYPE_MESSAGE:
                        for item in items:
                            container.add().CopyFrom(item)
                    else:
                        container.extend(items)
                elif f.type == FD.TYPE_MESSAGE:
                    getattr(msg, f.name).CopyFrom(draw(value))
                else:
                    setattr(msg, f.name, draw(value))
            return msg

        return draw_message()

    return build(descriptor, 0)


def message_bytes(strategy: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda m: m.SerializeToString())


# -- byte-level mutations --------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def _unknown_field(draw: st.DrawFn) -> bytes:
    number = draw(st.one_of(st.integers(1, 30), st.integers(1000, 2**29 - 1)))
    wire = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))  # 3/4: groups, 6/7: invalid
    key = encode_varint((number << 3) | wire)
    if wire == 0:
        return key + encode_varint(draw(st.integers(0, 2**64 - 1)))
    if wire == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if wire == 2:
        body = draw(st.binary(max_size=32))
        declared = draw(st.sampled_from([len(body), len(body) + 1, 2**31, 2**63]))
        return key + encode_varint(declared) + body
    return key + draw(st.binary(max_size=8))


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """A valid serialised request changed by one to four byte-level mutations."""
    data = bytearray(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(
                ["flip", "truncate", "splice", "unknown", "insert", "delete", "dup", "set"]
            )
        )
        n = len(data)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate" and n:
            del data[draw(st.integers(0, n - 1)) :]
        elif op == "splice":
            other = draw(st.sampled_from(list(seeds)))
            a = draw(st.integers(0, n))
            b = draw(st.integers(0, len(other)))
            data = data[:a] + bytearray(other[b:])
        elif op == "unknown":
            at = draw(st.sampled_from([0, n]))
            data[at:at] = draw(_unknown_field())
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and n:
            a = draw(st.integers(0, n - 1))
            del data[a : a + draw(st.integers(1, 8))]
        elif op == "dup" and n:
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, min(n, a + 64)))
            data[b:b] = data[a:b]
        elif op == "set" and n:
            data[draw(st.integers(0, n - 1))] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12])
            )
    return bytes(data)


@st.composite
def one_field_changed(
    draw: st.DrawFn, seed: Message, pool: Sequence[str] = (), hints: Hints | None = None
) -> Message:
    """``seed`` with one field (possibly nested) replaced, cleared or appended to."""
    msg = type(seed)()
    msg.CopyFrom(seed)
    target = msg
    hints = dict(hints or {})
    # Walk into a set sub-message now and then, so that nested fields change too.
    while True:
        nested = [
            f
            for f in target.DESCRIPTOR.fields
            if f.type == FD.TYPE_MESSAGE and not f.is_repeated and target.HasField(f.name)
        ]
        if not nested or not draw(st.booleans()):
            break
        target = getattr(target, draw(st.sampled_from(nested)).name)
    fields = cast(list[FD], list(target.DESCRIPTOR.fields))
    field = draw(st.sampled_from(fields))
    action = draw(st.sampled_from(["set", "set", "clear"]))
    if action == "clear":
        target.ClearField(field.name)
        return msg

    def build(desc: _d.Descriptor, depth: int) -> st.SearchStrategy[Message]:
        return messages(desc, pool=pool, hints=hints)

    value = draw(_value(field, 0, pool, hints, build))
    if field.is_repeated:
        container = getattr(target, field.name)
        if field.type == FD.TYPE_MESSAGE:
            container.add().CopyFrom(value)
        else:
            container.append(value)
    elif field.type == FD.TYPE_MESSAGE:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)
    return msg
