"""A response body kept ready to serve: its bytes, their gzip form and an ETag.

The ETag is a hash of the uncompressed body, so every replica that builds the same
body names it the same way, and a client holding it gets ``304 Not Modified``
without the body being sent again. It is weak (``W/"..."``) because the same tag
names both the identity and the gzip encoding of the body (RFC 9110 8.8.1).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass

from aircast import tuning


@dataclass(frozen=True, slots=True)
class CachedBody:
    body: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> CachedBody:
        digest = hashlib.blake2b(body, digest_size=16).hexdigest()
        # mtime=0: the same body always compresses to the same bytes.
        return cls(body, gzip.compress(body, tuning.GZIP_LEVEL, mtime=0), f'W/"{digest}"')


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """True when an ``If-None-Match`` header names ``etag`` (weak comparison, as RFC
    9110 13.1.2 prescribes for this header; ``*`` matches any current body)."""
    if not if_none_match:
        return False
    wanted = _opaque(etag)
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or _opaque(tag) == wanted:
            return True
    return False


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when an ``Accept-Encoding`` header allows gzip: named (or ``*``) with a
    quality above 0; an explicit ``gzip`` entry wins over ``*``."""
    qualities: dict[str, float] = {}
    for part in (accept_encoding or "").split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip().lower().replace(" ", "")
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        qualities[name.strip().lower()] = q
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0
