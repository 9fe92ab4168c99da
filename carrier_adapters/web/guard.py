"""The page's guards: who a request comes from, that it comes from the page itself, and the
headers that keep the browser strict.

* **Browser cookie.** ``holder_browser`` names the browser: random, HttpOnly, SameSite=Strict,
  no Max-Age (the browser drops it when it closes), Secure when the page is served over HTTPS
  (behind the carrier's TLS front end).
* **Page token.** Each page load gets a fresh token, a random nonce and an HMAC binding it to
  the browser cookie, kept only in that page. Every POST must carry it (header
  ``X-Page-Token`` or form field ``page_token``) from the same browser, so another site cannot
  post on the holder's behalf (CSRF: a token it cannot read, a cookie the browser will not send
  it, and an Origin it cannot fake); and the holder's session belongs to the page, so closing
  the page signs them out.
* **Origin.** A POST whose ``Origin`` or ``Sec-Fetch-Site`` says it came from elsewhere is
  refused before anything else.
* **Headers.** A strict Content-Security-Policy (scripts and styles from the page's own origin
  only, nothing inline, no framing), no caching, no referrer, no MIME sniffing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import MutableMapping
from typing import Any

from numfed.errors import PermissionDenied

__all__ = [
    "BROWSER_COOKIE",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "PageTokens",
    "browser_cookie",
    "check_origin",
    "new_browser_id",
]

BROWSER_COOKIE = "holder_browser"
NONCE_BYTES = 16
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}
"""Sent with every answer, static files and refusals included."""


def _expired() -> PermissionDenied:
    return PermissionDenied(
        "PAGE_EXPIRED", "the page token is missing, stale, or not this browser's"
    )


def new_browser_id() -> str:
    return secrets.token_urlsafe(16)


def browser_cookie(browser_id: str, *, secure: bool) -> str:
    """The Set-Cookie value: a session cookie (no Max-Age), HttpOnly, SameSite=Strict."""
    cookie = f"{BROWSER_COOKIE}={browser_id}; Path=/; HttpOnly; SameSite=Strict"
    return cookie + "; Secure" if secure else cookie


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class PageTokens:
    """Page tokens: ``nonce.mac``, the mac an HMAC of (browser id, nonce) under a key that lives
    as long as the process (a restart ends every page, as it ends every holder session)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, browser_id: str, nonce: bytes) -> bytes:
        msg = b"numfed page\0" + browser_id.encode() + b"\0" + nonce
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:16]

    def issue(self, browser_id: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return f"{_b64(nonce)}.{_b64(self._mac(browser_id, nonce))}"

    def check(self, browser_id: str | None, token: str | None) -> str:
        """The page key (browser id + nonce) of a valid token; PERMISSION_DENIED otherwise."""
        if not browser_id or not token or len(token) > 64 or token.count(".") != 1:
            raise _expired()
        nonce_text, mac_text = token.split(".")
        try:
            nonce, mac = _unb64(nonce_text), _unb64(mac_text)
        except (binascii.Error, ValueError) as exc:
            raise _expired() from exc
        if len(nonce) != NONCE_BYTES or not hmac.compare_digest(mac, self._mac(browser_id, nonce)):
            raise _expired()
        return f"{browser_id}.{nonce_text}"


def check_origin(headers: MutableMapping[str, str] | Any, own_origin: str) -> None:
    """Refuse a request the browser says came from another site (CSRF), before anything."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise _expired()
    origin = headers.get("origin")
    if origin is not None and origin != own_origin:
        raise _expired()
