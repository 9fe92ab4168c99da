"""Is a public key a proper key of its algorithm? Checked before any signature is verified with it.

``cryptography`` loads any 32 bytes as an Ed25519 public key: the identity, the other small-order
points and non-canonical encodings (y >= p) included, and verifying against such a key is
where Ed25519 implementations disagree (RFC 8032 leaves it open; libsodium, Zcash's ZIP-215,
Wycheproof and the C2SP vectors each draw the line elsewhere). A small-order key even has
signatures that verify for every message. No honest key is any of these (a key is ``a·B`` for
the base point B of prime order), so numfed refuses them all before trusting the key: the
encoding must be canonical (y < p, no "negative zero" x), the point must be on the curve, and it
must lie in the prime-order subgroup (``[L]A`` is the identity) without being the identity
itself. That is stricter than libsodium's blocklist of small-order encodings, which lets a key
with a small-order component through.

P-256 keys are checked by ``cryptography`` on load (the point is on the curve, its coordinates
are below p, the point at infinity has no encoding); the curve's cofactor is 1, so a point on it
lies in its one subgroup. That each key is written in its one encoding (named curve, uncompressed
point) is checked where keys are read (:meth:`numfed.envelope.VerifyKey.from_spki`).
"""

from __future__ import annotations

import functools

__all__ = ["ed25519_key_problem"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
"""The order of the base point: the prime-order subgroup honest keys lie in."""
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]
"""Extended homogeneous coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z."""
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(a: _Point, b: _Point) -> _Point:
    """RFC 8032 section 5.1.4's addition; complete, so it doubles too."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = t1 * 2 * _D * t2 % _P
    dd = z1 * 2 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _times(k: int, point: _Point) -> _Point:
    result = _IDENTITY
    for bit in bin(k)[2:]:
        result = _add(result, result)
        if bit == "1":
            result = _add(result, point)
    return result


def _is_identity(point: _Point) -> bool:
    x, y, z, _ = point
    return x % _P == 0 and (y - z) % _P == 0


def _decode(raw: bytes) -> _Point | str:
    """RFC 8032 section 5.1.3's decoding, refusing every non-canonical encoding."""
    n = int.from_bytes(raw, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= _P:
        return "its y coordinate is not below p (a non-canonical encoding)"
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif v * x * x % _P != u:
        return "it is not a point on the curve"
    if x == 0 and sign:
        return "its x coordinate is a negative zero (a non-canonical encoding)"
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


@functools.lru_cache(maxsize=1024)
def ed25519_key_problem(raw: bytes) -> str | None:
    """Why the 32 bytes ``raw`` are not a proper Ed25519 public key, or None when they are.

    Remembered per key: bundles are parsed again at every refresh and hold the same keys.
    """
    if len(raw) != 32:
        return f"it has {len(raw)} bytes, not 32"
    point = _decode(raw)
    if isinstance(point, str):
        return point
    if _is_identity(_times(8, point)):
        return "it is a point of small order (the identity or another torsion point)"
    if not _is_identity(_times(_L, point)):
        return "it is not in the prime-order subgroup (it has a small-order component)"
    return None
