"""``Content-Encoding`` request bodies and ``Accept-Encoding`` responses (gzip, deflate).

The body limit holds for the decompressed size as well: decompression stops as soon as the output
passes it, so a small compressed body that expands without bound (a zip bomb) is a 413, never memory
exhaustion.
"""

from __future__ import annotations

import zlib

from inferd.core.errors import InvalidInputError
from inferd.http.wire import BodyLimit

# zlib window bits: gzip framing, and "deflate" as HTTP means it (the zlib format, RFC 1950).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ENCODINGS = ("gzip", "deflate")
# Responses smaller than this are sent as they are: compressing them costs more than it saves.
MIN_COMPRESS_BYTES = 1024


def decompress(body: bytes, encoding: str, limit: BodyLimit) -> bytes:
    """``body`` decoded from ``encoding`` (``identity`` or empty: as is), at most ``limit`` bytes."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise InvalidInputError(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, limit.size + 1)
        if len(out) > limit.size or decoder.unconsumed_tail:
            raise limit.refuse("decompressed request body")
        out += decoder.flush()
    except zlib.error as exc:
        raise InvalidInputError(f"request body is not valid {name} data ({exc})") from None
    if len(out) > limit.size:
        raise limit.refuse("decompressed request body")
    if not decoder.eof:
        raise InvalidInputError(f"request body is truncated {name} data")
    return out


def accepted_encoding(accept_encoding: bytes | None) -> str | None:
    """The encoding to answer with: the first of gzip/deflate the client accepts (q > 0), else None."""
    if not accept_encoding:
        return None
    offered: dict[str, float] = {}
    for part in accept_encoding.decode("latin-1").lower().split(","):
        name, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        offered[name.strip()] = quality
    for name in ENCODINGS:
        if offered.get(name, offered.get("*", 0.0)) > 0:
            return name
    return None


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()
