"""Minimal disclosure: every message each platform receives carries the signed claim and no more.

Every request that reaches a platform servicer during a whole journey is captured as bytes.
The holder's name, ID number and SMS codes never appear in them, and every field in them is
one of the contract's claim fields (no unknown or extra data rides along).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from numfed.claims import TENURE_CLAIM_PAYLOAD_TYPE
from numfed.scenario import demo_scenario
from numfed.v1 import claim_pb2, platform_pb2
from platform_stubs.sdk import PlatformServicer
from tests.integration.conftest import start_federation
from tests.integration.holder import OWN, PRIOR
from tests.integration.test_journey import holder_app

WORLD = demo_scenario()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Message]]:
    seen: list[Message] = []
    for name in ("BatchQueryBindings", "BatchReleaseBindings"):
        original = getattr(PlatformServicer, name)

        async def capture(self: Any, request: Message, context: Any, _orig: Any = original) -> Any:
            seen.append(request)
            return await _orig(self, request, context)

        monkeypatch.setattr(PlatformServicer, name, capture)
    yield seen


def no_unknown_fields(msg: Message) -> None:
    assert len(UnknownFieldSet(msg)) == 0, f"unknown fields in {type(msg).__name__}"
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for v in value if field.is_repeated else [value]:
            no_unknown_fields(v)


async def test_platforms_receive_the_claim_and_nothing_else(
    tmp_path: Path, captured: list[Message]
) -> None:
    fed = await start_federation(tmp_path / "fed")
    try:
        secrets: list[bytes] = []
        for number in WORLD.showcase.values():
            app = await holder_app(fed, number)
            now = datetime.now(UTC)
            tenure = WORLD.histories[number].current_tenure(now)
            assert tenure is not None
            holder = WORLD.holders[tenure.holder_id]
            secrets += [holder.name.encode(), holder.id_number.encode()]
            await app.query(PRIOR)
            await app.query(OWN)
            op = await app.release(PRIOR)
            await app.watch(op.name)
        outboxes = (fed.layout.root / "state").glob("carrier-*/sms-outbox.jsonl")
        for outbox in outboxes:
            for line in outbox.read_text(encoding="utf-8").splitlines():
                secrets.append(json.loads(line)["code"].encode())
    finally:
        await fed.stop()

    assert len(captured) >= len(fed.platforms) * 3  # every platform saw queries and releases
    assert len(secrets) >= 12
    for request in captured:
        raw = request.SerializeToString()
        for secret in secrets:
            assert secret not in raw, "holder data reached a platform"
        no_unknown_fields(request)
        items: Any = request.items  # type: ignore[attr-defined]
        for item in items:
            assert set(f.name for f, _ in item.ListFields()) == {"item_id", "claim"}
            envelope: claim_pb2.Envelope = item.claim
            assert envelope.payload_type == TENURE_CLAIM_PAYLOAD_TYPE
            claim = claim_pb2.TenureClaim.FromString(envelope.payload)
            no_unknown_fields(claim)
            fields = {f.name for f, _ in claim.ListFields()}
            assert fields <= {
                "number",
                "carrier_id",
                "tenure_start",
                "purpose",
                "issued_at",
                "expires_at",
                "claim_id",
                "binding_refs",
            }
            assert isinstance(
                request,
                platform_pb2.BatchQueryBindingsRequest | platform_pb2.BatchReleaseBindingsRequest,
            )
