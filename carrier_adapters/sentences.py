"""What a holder is told when something is refused: one sentence per ErrorInfo reason, zh and en.

The holder's page and ``numfed holder`` say the same thing for the same refusal, from this one
table. A sentence says what happened in words a person uses and what to do next; it never quotes
a stack trace or an internal message. Reasons not in the table fall back to a sentence for their
status code, and anything else to :data:`GENERIC`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from numfed.errors import NumfedError

__all__ = [
    "BUSY_REASONS",
    "GENERIC",
    "LANGUAGES",
    "Sentence",
    "explain",
    "wait_seconds",
    "wait_text",
]

LANGUAGES = ("zh", "en")
"""The holder's languages; the first is the default."""


@dataclass(frozen=True)
class Sentence:
    """One thing said in each language; ``{name}`` placeholders are filled by :func:`explain`."""

    zh: str
    en: str

    def say_raw(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh

    def say(self, lang: str, **values: object) -> str:
        return self.say_raw(lang).format(**values)


_NOT_SERVED = Sentence(
    "{carrier_zh}不为这个号码提供服务。请在现在为它服务的运营商的页面办理。",
    "{carrier_en} does not serve this number. Please use the page of the carrier that serves "
    "it now.",
)
_BUSY = Sentence(
    "现在使用的人很多。请在{wait}后再试，什么都没有改变。",
    "Many people are using this service right now. Nothing was changed; please try again in "
    "{wait}.",
)
_SIGNED_OUT = Sentence(
    "您已退出（验证后15分钟自动退出，关闭页面也会退出）。请重新开始。",
    "You have been signed out (15 minutes after verifying, or when the page was closed). "
    "Please start again.",
)

ERRORS: Mapping[str, Sentence] = {
    # Entering the number and verifying.
    "MALFORMED_NUMBER": Sentence(
        "这不是一个有效的手机号码。请输入11位手机号，例如 138 1234 5678。",
        "That is not a valid mobile number. Enter the 11 digits, e.g. 138 1234 5678.",
    ),
    "NUMBER_NOT_SERVED": _NOT_SERVED,
    "UNKNOWN_NUMBER": _NOT_SERVED,
    "NO_CURRENT_HOLDER": Sentence(
        "这个号码目前没有持有人。",
        "This number has no holder at the moment.",
    ),
    "MALFORMED_ID_NUMBER": Sentence(
        "身份证号码是18位：17位数字，最后一位是数字或X。",
        "An ID number has 18 characters: 17 digits, then a digit or X.",
    ),
    "HOLDER_NOT_VERIFIED": Sentence(
        "姓名或身份证号码与这个号码的机主登记信息不符。请检查后再试。",
        "The name or ID number does not match the holder registered for this number. Please "
        "check them and try again.",
    ),
    "TOO_MANY_CODES": Sentence(
        "这个号码申请验证码的次数太多了。请在{wait}后再试。",
        "Too many codes were asked for this number. Please try again in {wait}.",
    ),
    "WRONG_CODE": Sentence(
        "验证码不对。还可以再试{attempts_left}次。",
        "That code is wrong. You can try {attempts_left} more time(s).",
    ),
    "VERIFICATION_NOT_FOUND": Sentence(
        "这个验证码已过期或已用完尝试次数。请重新获取验证码。",
        "That code has expired or its tries are used up. Please ask for a new code.",
    ),
    "NO_SESSION": _SIGNED_OUT,
    "NOT_THE_HOLDER": Sentence(
        "您验证之后，这个号码的持有人发生了变化。请重新开始。",
        "This number changed hands after you verified. Please start again.",
    ),
    # Choosing what to release.
    "NO_BINDINGS_SELECTED": Sentence(
        "请至少选择一项再解除绑定。",
        "Please select at least one item to release.",
    ),
    "TOO_MANY_RELEASES": Sentence(
        "这次登录中的解除操作太多了。请退出后重新验证。",
        "Too many releases in one visit. Please sign out and verify again.",
    ),
    "OPERATION_NOT_FOUND": Sentence(
        "找不到这次解除操作。请重新开始。",
        "That release could not be found. Please start again.",
    ),
    "UNKNOWN_PLATFORM": Sentence(
        "所选平台不在联盟中。",
        "A selected platform is not in the federation.",
    ),
    # The page's own limits and guards.
    "RATE_LIMITED": Sentence(
        "这个页面的操作太频繁了。请在{wait}后再试。",
        "Too many tries from this page. Please try again in {wait}.",
    ),
    "PAGE_EXPIRED": Sentence(
        "这个页面已过期或来自其他网站。请刷新页面重新开始。",
        "This page has expired or the request came from another site. Please reload the page "
        "and start again.",
    ),
    "OFFLINE": Sentence(
        "无法连接到服务。请检查网络后再试，什么都没有改变。",
        "The service could not be reached. Nothing was changed; please check your connection "
        "and try again.",
    ),
    "NO_HOLDER_SESSION": Sentence(
        "还没有验证：请先运行 numfed holder start。",
        "Nothing verified yet: run numfed holder start first.",
    ),
    # The federation's answers.
    "GATEWAY_UNAVAILABLE": Sentence(
        "暂时无法连接到平台联盟。什么都没有改变，请在{wait}后再试。",
        "The platforms' federation cannot be reached right now. Nothing was changed; please "
        "try again in {wait}.",
    ),
}

BUSY_REASONS = frozenset(
    {
        "OVERLOADED",
        "OVERLOADED_QUEUE_TIMEOUT",
        "CALLER_OVERLOADED",
        "TOO_MANY_VERIFICATIONS",
        "TOO_MANY_SESSIONS",
        "TOO_MANY_CLIENTS",
        "BUSY",
        "SERVER_OVERLOADED",
    }
)
"""RESOURCE_EXHAUSTED reasons that mean "the service is full", not "you asked too often"."""

BY_CODE: Mapping[str, Sentence] = {
    "INVALID_ARGUMENT": Sentence(
        "输入的内容有误。请检查后再试。",
        "Something entered is not right. Please check it and try again.",
    ),
    "UNAUTHENTICATED": _SIGNED_OUT,
    "PERMISSION_DENIED": Sentence(
        "这个操作不被允许。",
        "That is not allowed.",
    ),
    "NOT_FOUND": Sentence(
        "找不到要办理的内容。请重新开始。",
        "What you asked about could not be found. Please start again.",
    ),
    "FAILED_PRECONDITION": Sentence(
        "现在无法办理，情况已经变化。请重新开始。",
        "This cannot be done now: things have changed. Please start again.",
    ),
    "ALREADY_EXISTS": Sentence(
        "这个请求已经办理过了。请重新开始。",
        "This request was already made. Please start again.",
    ),
    "RESOURCE_EXHAUSTED": _BUSY,
    "UNAVAILABLE": Sentence(
        "服务暂时不可用。什么都没有改变，请在{wait}后再试。",
        "The service is unavailable right now. Nothing was changed; please try again in {wait}.",
    ),
    "DEADLINE_EXCEEDED": Sentence(
        "处理时间太长了。请在{wait}后再试；如果是解除绑定，重试不会重复办理。",
        "That took too long. Please try again in {wait}; a release tried again is not done twice.",
    ),
    "CANCELLED": Sentence(
        "服务繁忙，这次没有办完。请在{wait}后再试；如果是解除绑定，重试不会重复办理。",
        "The service is busy and did not finish this. Please try again in {wait}; a release "
        "tried again is not done twice.",
    ),
}

GENERIC = Sentence(
    "出了点问题，责任在我们。请稍后再试。",
    "Something went wrong on our side. Please try again later.",
)

_SECONDS = re.compile(r"[0-9]{1,9}")
DEFAULT_WAIT = 60.0
"""Seconds to suggest when a refusal that asks to come back later did not say when."""


def wait_seconds(err: NumfedError) -> float:
    """How long the refusal asks to wait: its RetryInfo, else its ``retry_after_seconds``
    metadata, else :data:`DEFAULT_WAIT`."""
    if err.retry_after is not None:
        return err.retry_after
    raw = err.metadata.get("retry_after_seconds", "")
    return float(raw) if _SECONDS.fullmatch(raw) else DEFAULT_WAIT


def wait_text(seconds: float, lang: str) -> str:
    """A wait as a person says it: "45 s", "3 minutes" / "45秒", "3分钟" (rounded up)."""
    s = max(math.ceil(seconds), 1)
    if s < 90:
        return f"{s}秒" if lang == "zh" else f"{s} s"
    minutes = math.ceil(s / 60)
    if lang == "zh":
        return f"{minutes}分钟"
    return f"{minutes} minute" + ("" if minutes == 1 else "s")


def sentence_for(err: NumfedError) -> Sentence:
    """The table's sentence for ``err``: by reason, then by status code, then generic."""
    if err.reason in ERRORS:
        return ERRORS[err.reason]
    if err.code == "RESOURCE_EXHAUSTED" and err.reason not in BUSY_REASONS:
        return ERRORS["RATE_LIMITED"]
    return BY_CODE.get(err.code, GENERIC)


def explain(err: NumfedError, lang: str, *, carrier_zh: str, carrier_en: str) -> str:
    """The sentence a holder reads for ``err``, in ``lang``."""
    attempts = err.metadata.get("attempts_left", "")
    if err.reason == "WRONG_CODE" and attempts == "0":
        return ERRORS["VERIFICATION_NOT_FOUND"].say(lang)
    return sentence_for(err).say(
        lang,
        wait=wait_text(wait_seconds(err), lang),
        attempts_left=attempts or "?",
        carrier_zh=carrier_zh,
        carrier_en=carrier_en,
    )
