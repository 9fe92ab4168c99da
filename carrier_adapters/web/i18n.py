"""The page's words in Chinese and English: one table, looked up by key.

Refusals are not here but in :mod:`carrier_adapters.sentences` (shared with ``numfed holder``).
Keys name what the text is for; ``{name}`` placeholders are filled when the page is rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from carrier_adapters.sentences import LANGUAGES, Sentence

__all__ = ["KINDS", "PLATFORM_NAMES", "TEXT", "choose_language", "translator"]

S = Sentence

TEXT: Mapping[str, Sentence] = {
    "service": S("号码持有人服务", "Number holder service"),
    "skip": S("跳到主要内容", "Skip to the main content"),
    "other_language": S("English", "中文"),
    "other_language_name": S("Switch to English", "切换到中文"),
    "noscript": S("这个页面需要启用 JavaScript。", "This page needs JavaScript to be switched on."),
    "offline": S(
        "无法连接到服务。请检查网络后再试，什么都没有改变。",
        "The service could not be reached. Nothing was changed; please check your connection "
        "and try again.",
    ),
    "working": S("正在处理……", "Working…"),
    "step": S("第{n}步，共7步", "Step {n} of 7"),
    # Tabs, once verified.
    "tabs": S("办理事项", "What you can do"),
    "tab_prior": S("前任机主的绑定", "Previous holders' bindings"),
    "tab_own": S("我自己的绑定", "My own bindings"),
    "tab_labels": S("号码标记", "Number marking"),
    "sign_out": S("退出", "Sign out"),
    # Step 1.
    "number_title": S("输入您的手机号码", "Enter your mobile number"),
    "number_intro": S(
        "如果您的号码是运营商回收后重新放号的，前任机主可能还在一些网站和应用上绑定着它："
        "您会收到他们的验证码，也可能无法注册。在这里，{carrier_zh}可以代您请各个平台解除"
        "前任机主的绑定。",
        "If your number was used by someone before you, their accounts on websites and apps may "
        "still be bound to it: you receive their codes, and you may be unable to sign up. Here "
        "{carrier_en} asks the platforms, on your behalf, to release the previous holders' "
        "bindings.",
    ),
    "number_label": S("手机号码", "Mobile number"),
    "number_hint": S(
        "11位数字，例如 138 1234 5678；其他国家或地区的号码请以 + 开头。",
        "11 digits, e.g. 138 1234 5678; a number of another country starts with +.",
    ),
    "continue": S("继续", "Continue"),
    # Step 2.
    "verify_title": S("确认您是机主", "Confirm you hold the number"),
    "verify_intro": S(
        "{carrier_zh}会核对您的姓名和身份证号码与{number}的机主登记信息，然后发送短信验证码"
        "到这个号码。这些信息只留在{carrier_zh}，不会发给任何平台。",
        "{carrier_en} checks your name and ID number against the registered holder of {number}, "
        "then sends a code by SMS to that number. These details stay with {carrier_en}; no "
        "platform ever receives them.",
    ),
    "name_label": S("姓名", "Name"),
    "name_hint": S("与办理号码时登记的姓名一致", "As registered with your carrier"),
    "id_label": S("身份证号码", "ID number"),
    "id_hint": S("18位，最后一位可能是X", "18 characters; the last may be X"),
    "send_code": S("发送验证码", "Send the code"),
    "code_sent": S(
        "验证码已通过短信发送到{number}，{expires}前有效。",
        "A code was sent by SMS to {number}; it is valid until {expires}.",
    ),
    "code_label": S("短信验证码", "Code from the SMS"),
    "code_hint": S("6位数字", "6 digits"),
    "confirm": S("确认", "Confirm"),
    "new_code": S("重新获取验证码", "Ask for a new code"),
    "other_number": S("换一个号码", "Use another number"),
    # Step 3.
    "claim_title": S("平台会看到什么", "What the platforms will see"),
    "claim_held_since": S(
        "{carrier_zh}将证明：您从 {x} 起持有{number}。",
        "{carrier_en} will attest that you have held {number} since {x}.",
    ),
    "claim_intro": S(
        "平台收到的是下面这份由{carrier_zh}签名的声明，仅此而已：没有您的姓名、身份证号码，"
        "也没有验证码。每个平台都会自己核验签名。",
        "The platforms receive the statement below, signed by {carrier_en}, and nothing more: "
        "not your name, not your ID number, not the code. Each platform checks the signature "
        "itself.",
    ),
    "claim_caption": S("声明内容", "The claim"),
    "claim_number": S("号码", "Number"),
    "claim_carrier": S("证明的运营商", "Attesting carrier"),
    "claim_x": S("现任机主的持有起始时间（X）", "Current holder's tenure began (X)"),
    "claim_purpose": S("用途", "Purpose"),
    "claim_valid": S("有效期", "Valid"),
    "claim_valid_value": S("{issued} 至 {expires}", "{issued} to {expires}"),
    "claim_id": S("声明编号（随机，每份声明各不相同）", "Claim id (random, new for each claim)"),
    "purpose_QUERY_PRIOR": S("查询X之前的绑定", "find bindings made before X"),
    "purpose_RELEASE_PRIOR": S("解除X之前的绑定", "release bindings made before X"),
    "purpose_QUERY_OWN": S("查询X之后您自己的绑定", "list your own bindings, made since X"),
    "purpose_HOLDER_PROOF": S("持有证明", "a proof of your tenure"),
    "query": S("查询前任机主的绑定", "Find previous holders' bindings"),
    # Step 4.
    "query_title": S("前任机主留下的绑定", "Bindings left by previous holders"),
    "query_caption": S("各平台的答复", "What each platform answered"),
    "col_select": S("选择", "Select"),
    "col_platform": S("平台", "Platform"),
    "col_answer": S("答复", "Answer"),
    "col_status": S("进展", "Progress"),
    "found": S("{count}项前任机主的绑定", "{count} binding(s) of previous holders"),
    "clean": S("干净：没有X之前的绑定", "Clean: nothing bound before X"),
    "no_answer": S(
        "没有答复：无法知道那里是否有绑定",
        "Did not answer: we cannot tell whether anything is bound there",
    ),
    "refused": S("拒绝了请求", "Refused the request"),
    "expired": S("期限内没有答复", "Did not answer in time"),
    "explain_what": S(
        "将解除：所选平台上在 {x} 之前绑定到这个号码的账号（前任机主的），号码会从这些账号上移除。",
        "What will be released: on the platforms you select, the accounts bound to this number "
        "before {x}, which are previous holders'. The number is taken off those accounts.",
    ),
    "explain_own": S(
        "您自己的绑定（{x} 及之后绑定的）永远不会被改动。",
        "Your own bindings, made at or after {x}, are never touched.",
    ),
    "explain_kept": S(
        "账号不会被删除：它们仍属于原来的主人，只是不再绑定这个号码。",
        "Accounts are not deleted: they stay with their owners, without this number.",
    ),
    "explain_no_answer": S(
        "没有答复的平台：可能暂时故障或太忙。无法知道那里有没有绑定。您仍然可以选择它："
        "解除请求会一直重试，直到它答复（约一小时内）。",
        "A platform that did not answer may be down or busy for a while: we cannot tell whether "
        "anything is bound there. You can still select it: the release is tried again until it "
        "answers (for about an hour).",
    ),
    "all_clean": S(
        "所有答复的平台上都没有前任机主的绑定。",
        "No platform that answered has bindings of previous holders.",
    ),
    "release": S("解除所选平台上的绑定", "Release on the selected platforms"),
    "query_again": S("重新查询", "Ask again"),
    "take_proof": S("领取持有证明", "Take away a proof of your tenure"),
    # Steps 5 and 6.
    "release_title": S("正在解除", "Releasing"),
    "release_intro": S(
        "请求已被接受并保存，不会丢失。各平台的进展会实时显示在这里。",
        "The request was accepted and stored; it will not be lost. Each platform's progress "
        "shows here as it happens.",
    ),
    "progress_label": S("已答复的平台", "Platforms that have answered"),
    "progress_count": S("{done} / {total} 个平台已答复", "{done} of {total} platforms answered"),
    "waiting": S("等待答复", "Waiting for an answer"),
    "released": S("已解除{count}项", "Released {count}"),
    "nothing_to_release": S("没有需要解除的", "Nothing to release"),
    "retrying": S(
        "还没有答复，会一直重试到 {deadline}",
        "Not answered yet: tried again until {deadline}",
    ),
    "release_done": S("解除完成。", "The release is finished."),
    "check_progress": S("刷新进展", "Check progress"),
    "see_receipt": S("查看回执和持有证明", "See the receipt and your proof"),
    # Step 7.
    "receipt_title": S("回执", "Receipt"),
    "receipt_caption": S("解除结果", "What was released"),
    "receipt_none": S("这次没有解除任何绑定。", "Nothing was released this time."),
    "proof_title": S("您的持有证明", "Your holder proof"),
    "proof_intro": S(
        "这是{carrier_zh}签名的证明：{number}从 {x} 起由现任机主持有。它不包含您的姓名或身份证"
        "号码。您可以把它交给任何人，例如一个还不认可这个号码的平台。",
        "This is a proof signed by {carrier_en}: {number} has been held by its current holder "
        "since {x}. It holds neither your name nor your ID number. You can give it to anyone, "
        "for example a platform that does not yet accept the number as yours.",
    ),
    "proof_label": S("持有证明（{expires}前有效）", "Holder proof (valid until {expires})"),
    "proof_verify_title": S("任何人都可以核验它", "How anyone can verify it"),
    "proof_verify": S(
        "核验者需要联盟的信任文件（根密钥和信任包），然后离线运行：",
        "They need the federation's trust files (root keys and trust bundle), then run, offline:",
    ),
    "proof_verify_after": S(
        "改动过任何一个字符、已过期或密钥已被撤销的证明都通不过核验。",
        "A proof with any character changed, an expired proof, or one signed with a revoked "
        "key proves nothing.",
    ),
    # Own bindings.
    "own_title": S("我自己的绑定", "My own bindings"),
    "own_intro": S(
        "这些是您持有号码期间（{x} 起）绑定到这个号码的账号。如果您要放弃这个号码，可以逐项"
        "解除：只解除您选中的那一项。账号不会被删除。",
        "These accounts were bound to the number during your tenure (since {x}). If you are "
        "giving up the number, release them one by one: only the one you choose is released. "
        "Accounts are not deleted.",
    ),
    "own_caption": S("您的绑定", "Your bindings"),
    "col_binding": S("绑定", "Binding"),
    "col_action": S("操作", "Action"),
    "own_release": S("解除这一项", "Release this one"),
    "own_none": S(
        "答复的平台上没有您自己的绑定。", "No platform that answered has bindings of yours."
    ),
    "own_unanswered": S(
        "没有答复的平台：{platforms}", "Platforms that did not answer: {platforms}"
    ),
    # Number marking.
    "labels_title": S("号码标记", "Number marking"),
    "labels_intro": S(
        "来电识别服务会给号码打上标记，例如“骚扰电话”或“催收”。在 {x} 之前打上的标记来自前任"
        "机主；清除它们，您持有期间打上的标记会保留。",
        "Caller-ID services mark numbers, e.g. “harassment” or “debt collection”. Marks set "
        "before {x} were earned by previous holders; clearing them keeps the marks set since you "
        "got the number.",
    ),
    "labels_caption": S("前任机主留下的标记", "Marks left by previous holders"),
    "labels_none": S(
        "答复的来电识别服务上没有前任机主留下的标记。",
        "No caller-ID service that answered has marks left by previous holders.",
    ),
    "labels_clear": S("清除这些标记", "Clear these marks"),
    # Busy.
    "busy_title": S("现在很忙", "Busy right now"),
    "busy": S(
        "现在使用的人很多。请在{seconds}秒后再试，什么都没有改变。",
        "Many people are using this service right now. Nothing was changed; please try again in "
        "{seconds} s.",
    ),
    "try_again": S("再试一次", "Try again"),
    "error_title": S("出了点问题", "Something went wrong"),
}

KINDS: Mapping[int, Sentence] = {
    1: S("登录账号", "account login"),
    2: S("找回账号", "account recovery"),
    3: S("支付", "payment"),
    4: S("来电标记", "caller-ID mark"),
}
"""BindingKind values as words."""

PLATFORM_NAMES: Mapping[str, Sentence] = {
    "weibo": S("微博", "Weibo"),
    "taobao": S("淘宝", "Taobao"),
    "douyin": S("抖音", "Douyin"),
    "toutiao": S("今日头条", "Toutiao"),
    "meituan": S("美团", "Meituan"),
    "dianping": S("大众点评", "Dianping"),
    "xiaomi": S("小米", "Xiaomi"),
    "labels": S("来电识别", "Caller ID"),
}
"""Names people know platforms by; a platform not listed shows its id."""


def choose_language(asked: str | None, accept_language: str) -> str:
    """``asked`` if it is a language of the page, else the first of ``accept_language`` the
    page speaks, else Chinese."""
    if asked in LANGUAGES:
        return asked
    for part in accept_language.split(","):
        tag = part.split(";")[0].strip().lower()
        for lang in LANGUAGES:
            if tag == lang or tag.startswith(lang + "-"):
                return lang
    return LANGUAGES[0]


def translator(lang: str, **common: object) -> Callable[..., str]:
    """``t(key, **values)`` for templates: the text of ``key`` in ``lang``, with ``common``
    values (the carrier's names, say) filled in too."""

    def t(key: str, **values: object) -> str:
        return TEXT[key].say(lang, **{**common, **values})

    return t


def platform_name(platform_id: str, lang: str) -> str:
    name = PLATFORM_NAMES.get(platform_id)
    return name.say(lang) if name else platform_id
