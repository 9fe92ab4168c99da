"""The demo federation's world: numbers with several holders, and what each holder bound.

Carriers seed their subscriber registries from it, reference platforms seed their accounts from
it, and the demo and tests know from it what each step must show. It uses fixed dates, so every
process builds the same world without talking to the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from numfed.history import EventKind, NumberEvent, NumberHistory

__all__ = [
    "APP_PLATFORMS",
    "CARRIERS",
    "LABEL_PLATFORM",
    "PLATFORMS",
    "Holder",
    "Scenario",
    "SeedBinding",
    "demo_scenario",
]

CARRIERS = ("cmcc", "cucc", "ctcc")
APP_PLATFORMS = ("weibo", "taobao", "douyin", "toutiao", "meituan", "dianping", "xiaomi")
LABEL_PLATFORM = "labels"
"""A caller-ID service: its "bindings" are labels on numbers (harassment, debt collection)."""
PLATFORMS = (*APP_PLATFORMS, LABEL_PLATFORM)

_KINDS = {
    "weibo": "ACCOUNT_LOGIN",
    "taobao": "PAYMENT",
    "douyin": "ACCOUNT_LOGIN",
    "toutiao": "ACCOUNT_LOGIN",
    "meituan": "PAYMENT",
    "dianping": "ACCOUNT_RECOVERY",
    "xiaomi": "ACCOUNT_RECOVERY",
    "labels": "LABEL",
}

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英"


@dataclass(frozen=True)
class Holder:
    """A subscriber as the carrier knows them. Never leaves the carrier."""

    holder_id: str
    name: str
    id_number: str


@dataclass(frozen=True)
class SeedBinding:
    """An account on a platform bound to a number at ``bound_at``."""

    platform_id: str
    account_id: str
    nickname: str
    number: str
    kind: str
    bound_at: datetime
    holder_id: str


@dataclass(frozen=True)
class Scenario:
    holders: dict[str, Holder]
    histories: dict[str, NumberHistory]
    bindings: tuple[SeedBinding, ...]
    showcase: dict[str, str]
    """Label -> number for the demo's walk: recycled_once, recycled_twice, ported, fresh."""

    def histories_served_by(self, carrier_id: str, now: datetime) -> list[NumberHistory]:
        return [h for h in self.histories.values() if h.carrier_at(now) == carrier_id]

    def histories_known_to(self, carrier_id: str) -> list[NumberHistory]:
        """Every number whose history touches the carrier (it served it at some point)."""
        return [
            h for h in self.histories.values() if any(e.carrier_id == carrier_id for e in h.events)
        ]

    def bindings_on(self, platform_id: str) -> list[SeedBinding]:
        return [b for b in self.bindings if b.platform_id == platform_id]


def _utc(y: int, m: int, d: int, hh: int = 9) -> datetime:
    return datetime(y, m, d, hh, tzinfo=UTC)


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.holders: dict[str, Holder] = {}
        self.histories: dict[str, NumberHistory] = {}
        self.bindings: list[SeedBinding] = []
        self._accounts = 0

    def holder(self) -> str:
        n = len(self.holders) + 1
        hid = f"h{n:05d}"
        name = self.rng.choice(_SURNAMES) + "".join(self.rng.choices(_GIVEN, k=2))
        birth = _utc(1960, 1, 1) + timedelta(days=self.rng.randrange(40 * 365))
        region = self.rng.choice(["110101", "310104", "440305", "320102", "330106"])
        body = f"{region}{birth:%Y%m%d}{self.rng.randrange(1000):03d}"
        self.holders[hid] = Holder(hid, name, body + _id_check_digit(body))
        return hid

    def add(self, number: str, events: list[NumberEvent]) -> NumberHistory:
        h = NumberHistory(number, tuple(events))
        self.histories[number] = h
        return h

    def bind(self, platform: str, number: str, holder_id: str, at: datetime) -> None:
        self._accounts += 1
        acct = f"{platform[:2]}{self.rng.randrange(10**9, 10**10)}"
        nick = f"{self.rng.choice(_SURNAMES)}{self.rng.choice(['小', '阿', '老'])}{self._accounts}"
        self.bindings.append(
            SeedBinding(platform, acct, nick, number, _KINDS[platform], at, holder_id)
        )

    def label(self, number: str, holder_id: str, display: str, at: datetime) -> None:
        """A caller-ID label set on the number at ``at`` (its display name is the nickname)."""
        self._accounts += 1
        self.bindings.append(
            SeedBinding(
                LABEL_PLATFORM, f"lb{self._accounts:07d}", display, number, "LABEL", at, holder_id
            )
        )

    def bind_during(
        self, number: str, holder_id: str, start: datetime, end: datetime, platforms: list[str]
    ) -> None:
        span = max(int((end - start).total_seconds()), 1)
        for p in platforms:
            self.bind(p, number, holder_id, start + timedelta(seconds=self.rng.randrange(span)))


def _id_check_digit(body17: str) -> str:
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    total = sum(int(c) * w for c, w in zip(body17, weights, strict=True))
    return "10X98765432"[total % 11]


def demo_scenario(*, extra_numbers: int = 120, seed: int = 2026) -> Scenario:
    """The four showcase numbers plus ``extra_numbers`` random ones, deterministic for ``seed``."""
    b = _Builder(random.Random(seed))
    A, D, P = EventKind.ASSIGNED, EventKind.DEACTIVATED, EventKind.PORTED
    showcase: dict[str, str] = {}

    # Recycled once: the previous holder left accounts on four platforms.
    n = "+8613812345678"
    h1, h2 = b.holder(), b.holder()
    x = _utc(2022, 7, 1)
    b.add(
        n,
        [
            NumberEvent(A, _utc(2015, 3, 2), "cmcc", h1),
            NumberEvent(D, _utc(2022, 3, 1), "cmcc"),
            NumberEvent(A, x, "cmcc", h2),
        ],
    )
    b.bind_during(
        n, h1, _utc(2015, 3, 2), _utc(2022, 3, 1), ["weibo", "taobao", "douyin", "meituan"]
    )
    b.bind_during(n, h2, x, _utc(2026, 6, 1), ["weibo", "xiaomi"])
    b.bind("dianping", n, h2, x)  # bound at exactly X: the current holder's, never released
    # Labels the previous holder's debts earned the number, and one the new holder asked for.
    b.label(n, h1, "催收 (debt collection)", _utc(2021, 11, 3))
    b.label(n, h1, "骚扰电话 (harassment)", _utc(2022, 2, 14))
    b.label(n, h2, "快递 (courier)", _utc(2023, 5, 20))
    showcase["recycled_once"] = n

    # Recycled twice: two previous holders, both left bindings.
    n = "+8618611112222"
    h1, h2, h3 = b.holder(), b.holder(), b.holder()
    x = _utc(2021, 9, 15)
    b.add(
        n,
        [
            NumberEvent(A, _utc(2012, 5, 20), "cucc", h1),
            NumberEvent(D, _utc(2017, 1, 10), "cucc"),
            NumberEvent(A, _utc(2017, 6, 1), "cucc", h2),
            NumberEvent(D, _utc(2021, 5, 1), "cucc"),
            NumberEvent(A, x, "cucc", h3),
        ],
    )
    b.bind_during(n, h1, _utc(2012, 5, 20), _utc(2017, 1, 10), ["weibo", "toutiao", "dianping"])
    b.bind_during(n, h2, _utc(2017, 6, 1), _utc(2021, 5, 1), ["taobao", "douyin", "weibo"])
    b.bind_during(n, h3, x, _utc(2026, 6, 1), ["meituan", "douyin"])
    b.bind("taobao", n, h2, x - timedelta(seconds=1))  # one second before X: released
    showcase["recycled_twice"] = n

    # Ported: recycled at cucc, then the current holder moved to cmcc. X stays the assignment.
    n = "+8613012345670"
    h1, h2 = b.holder(), b.holder()
    x = _utc(2020, 5, 6)
    b.add(
        n,
        [
            NumberEvent(A, _utc(2016, 2, 1), "cucc", h1),
            NumberEvent(D, _utc(2019, 12, 1), "cucc"),
            NumberEvent(A, x, "cucc", h2),
            NumberEvent(P, _utc(2023, 4, 1), "cmcc"),
        ],
    )
    b.bind_during(n, h1, _utc(2016, 2, 1), _utc(2019, 12, 1), ["weibo", "xiaomi", "toutiao"])
    b.bind_during(n, h2, x, _utc(2023, 4, 1), ["taobao", "weibo"])  # before the port: kept
    b.bind_during(n, h2, _utc(2023, 4, 1), _utc(2026, 6, 1), ["douyin"])
    showcase["ported"] = n

    # Fresh: a first holder; nothing to release.
    n = "+8615312340000"
    h1 = b.holder()
    x = _utc(2024, 2, 29)
    b.add(n, [NumberEvent(A, x, "ctcc", h1)])
    b.bind_during(n, h1, x, _utc(2026, 6, 1), ["weibo", "meituan", "taobao"])
    showcase["fresh"] = n

    prefixes = {
        "cmcc": ["139", "138", "188"],
        "cucc": ["186", "130", "156"],
        "ctcc": ["189", "153", "181"],
    }
    for i in range(extra_numbers):
        carrier = CARRIERS[i % 3]
        number = f"+86{b.rng.choice(prefixes[carrier])}{b.rng.randrange(10**8):08d}"
        if number in b.histories:
            continue
        events: list[NumberEvent] = []
        t = _utc(2010, 1, 1) + timedelta(days=b.rng.randrange(0, 3 * 365))
        for _holder in range(b.rng.randint(1, 3)):
            hid = b.holder()
            events.append(NumberEvent(A, t, carrier, hid))
            end = t + timedelta(days=b.rng.randrange(200, 2000))
            b.bind_during(
                number, hid, t, min(end, _utc(2026, 6, 1)), b.rng.sample(APP_PLATFORMS, 2)
            )
            if end > _utc(2026, 1, 1):
                break
            events.append(NumberEvent(D, end, carrier))
            t = end + timedelta(days=b.rng.randrange(90, 200))
        b.add(number, events)
    return Scenario(b.holders, b.histories, tuple(b.bindings), showcase)
