"""Limits on the shape of a JSON request body, checked before any pipeline stage sees it.

- Nesting: JSON Schema checks, user hooks and the output encoder recurse per level; a body nested a few
  hundred levels deep made them fail with RecursionError (a 500 and a logged traceback). Deeper than
  ``max_depth`` is refused as ``invalid_input``.
- Integers: orjson turns an integer outside [-2**63, 2**64 - 1] into a float, silently changing the
  client's number. Such integers are refused as ``invalid_input``: inferd never changes a number.

Both checks are nearly free on the hot path: a body with fewer brackets than the limit cannot be nested
deeper than it, and a body without a run of 19 digits that starts a number holds no integer outside
64 bits (-2**63 - 1 has 19 digits). Digits right after '.', 'e', 'E' or '+' belong to a float's
fraction or exponent, so FP32/FP64 tensors printed with 17 digits do not count. Only bodies that fail
those cheap tests are looked at closely.
"""

from __future__ import annotations

import json

import orjson

from inferd.core.errors import InvalidInputError

DEFAULT_MAX_DEPTH = 64
# The pipeline's recursive code (jsonschema, orjson's encoder at 255 levels) must stay within reach.
MAX_MAX_DEPTH = 200
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

# Digits become "0"; the bytes that can precede a float's fraction or exponent digits ('.', 'e', 'E',
# '+') become "f"; everything else " ". A JSON number starts at the body's start or after whitespace,
# '[', ',', ':' or '-', all " ", so an integer of 19+ digits shows as " " + 19 "0" (or 19 "0" first):
# a substring search (a regex search cost more than parsing the body). A float's integer part, an
# exponent after '-', or digits in a string may match too; the close look below lets them pass.
_NUMBER_CLASSES = bytes(48 if 48 <= byte <= 57 else 102 if byte in b".eE+" else 32 for byte in range(256))
_NINETEEN_DIGITS = b"0" * 19
_INTEGER_START = b" " + _NINETEEN_DIGITS


def check_body(body: bytes, *, max_depth: int) -> None:
    """Refuse a JSON body nested deeper than ``max_depth`` or holding an integer orjson cannot keep
    exact. A body that is not JSON passes: the route's own parser says what is wrong with it."""
    if _may_exceed(body, max_depth):
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc):  # orjson's own limit, 1,024 levels
                raise _too_deep(max_depth) from None
            return
        if _depth_exceeds(body, max_depth):
            raise _too_deep(max_depth)
    classes = body.translate(_NUMBER_CLASSES)
    if _INTEGER_START in classes or classes.startswith(_NINETEEN_DIGITS):
        _check_integers(body)


def decode_error(body: bytes, exc: orjson.JSONDecodeError, *, example: str) -> InvalidInputError:
    """Why a request body did not parse as JSON, saying what to send instead."""
    return not_utf8(body, "request body", example=example) or InvalidInputError(
        f"request body is not valid JSON ({exc}); send {example}"
    )


def not_utf8(data: bytes, what: str, *, example: str) -> InvalidInputError | None:
    """The error for JSON text ``what`` that is not UTF-8, naming the first bad byte; None if it is
    UTF-8. orjson says only 'str is not valid UTF-8: surrogates not allowed' at line 1 column 1."""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return InvalidInputError(
            f"{what} must be UTF-8 JSON: byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8; "
            f"send {example}"
        )
    return None


def _too_deep(max_depth: int) -> InvalidInputError:
    return InvalidInputError(
        f"request body is nested more than {max_depth} levels deep (the server's max_json_depth)",
        cause="max_json_depth",
    )


def _may_exceed(body: bytes, max_depth: int) -> bool:
    return len(body) > 2 * max_depth and body.count(b"[") + body.count(b"{") > max_depth


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")


def _depth_exceeds(body: bytes, max_depth: int) -> bool:
    """Nesting depth of valid JSON from its bytes, in C-speed bytes operations (a walk over the parsed
    value in Python cost more than parsing it, for a batch of 1,024 small lists)."""
    if b'"' in body:
        # Drop escaped backslashes and quotes; every quote left delimits a string: keep what is outside.
        body = b"".join(body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = body.translate(_SQUARE, _NOT_BRACKETS)
    # Each pass removes the innermost level everywhere; what is left after max_depth passes is deeper.
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def _exact_int(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInputError(
            f"the integer {shown} is outside the 64-bit range inferd keeps exact "
            f"({INT_MIN} to {INT_MAX}); send it as a string"
        )
    return value


def _check_integers(body: bytes) -> None:
    # The run of digits may sit inside a string or a float; only the standard library's parser, which
    # keeps integers exact, tells. It is reached only for bodies where a run of 19 digits may start a
    # number, and their nesting is already bounded, so its recursion is too.
    try:
        json.loads(body, parse_int=_exact_int)
    except (ValueError, RecursionError):
        return  # not JSON, or the standard parser's own quirks: the route's parser decides
