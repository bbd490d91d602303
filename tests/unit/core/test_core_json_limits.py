"""core.json_limits: the byte-level nesting check agrees with a walk of the parsed value; integers
outside 64 bits are refused wherever they sit, digits inside strings are not."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from inferd.core import json_limits
from inferd.core.errors import InvalidInputError
from inferd.core.json_limits import _depth_exceeds, check_body


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(child) for child in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(child) for child in value.values()), default=0)
    return 0


def random_value(rnd: random.Random, depth: int) -> Any:
    # Strings full of brackets, quotes and backslashes: they must not count as nesting.
    if depth == 0 or rnd.random() < 0.2:
        return rnd.choice([1, 'a[{\\"]}', "\\", '"', 2.5, None, "]]]", "{{"])
    if rnd.random() < 0.5:
        return [random_value(rnd, depth - 1) for _ in range(rnd.randint(0, 3))]
    keys = ["k", "[", "}\\", '"']
    return {rnd.choice(keys) + str(i): random_value(rnd, depth - 1) for i in range(rnd.randint(0, 3))}


def test_byte_depth_matches_the_parsed_depth() -> None:
    rnd = random.Random(1)
    for _ in range(500):
        value = random_value(rnd, rnd.randint(0, 10))
        body = orjson.dumps(value)
        depth = depth_of(value)
        for limit in range(1, 12):
            assert _depth_exceeds(body, limit) == (depth > limit), (body, depth, limit)


def test_too_deep_is_invalid_input() -> None:
    body = b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}"
    with pytest.raises(InvalidInputError, match="nested more than 64 levels"):
        check_body(body, max_depth=64)
    with pytest.raises(InvalidInputError, match="nested more than 64 levels"):
        check_body(b"[" * 2000 + b"]" * 2000, max_depth=64)  # past orjson's own limit too
    check_body(b"[" * 100 + b"not json", max_depth=64)  # the route's own parser reports it


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b'{"n": 18446744073709551615}', False),
        (b'{"n": -9223372036854775808}', False),
        (b'{"n": 18446744073709551616}', True),
        (b'{"n": -9223372036854775809}', True),
        (b'{"n": [0, {"m": 123456789012345678901234567890}]}', True),
        (b'{"n": "123456789012345678901234567890"}', False),
        (b'{"n": 1234567890123456789012345.5}', False),
        (b'{"n": 1e300}', False),
    ],
)
def test_integers_outside_64_bits_are_refused(body: bytes, refused: bool) -> None:
    if refused:
        with pytest.raises(InvalidInputError, match="send it as a string"):
            check_body(body, max_depth=64)
    else:
        check_body(body, max_depth=64)


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b"18446744073709551616", True),  # the whole body
        (b"-18446744073709551616", True),
        (b"[1,18446744073709551616]", True),
        (b'{"n":\n\t18446744073709551616}', True),
        (b'{"n": 1.5, "m": -9223372036854775809, "f": 0.1234567890123456789}', True),
        (b"[1e-12345678901234567890]", False),
        (b"[1E+12345678901234567890]", False),
    ],
)
def test_integers_are_found_beside_floats_and_at_every_number_start(body: bytes, refused: bool) -> None:
    if refused:
        with pytest.raises(InvalidInputError, match="send it as a string"):
            check_body(body, max_depth=64)
    else:
        check_body(body, max_depth=64)


def test_long_fractions_skip_the_slow_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """FP32/FP64 values printed with 17 significant digits below 0.01 (0.0012345678901234567) have 19+
    digits after the point but are no integer: the cheap pre-check must not send them to the standard
    library's parser (~20 % of a 1 MiB V2 JSON request)."""

    def slow_parse(body: bytes) -> None:
        raise AssertionError("the body went to the slow integer check")

    monkeypatch.setattr(json_limits, "_check_integers", slow_parse)
    floats = [0.0012345678901234567, -0.00012345678901234567, 0.12345678901234567, 3.0000000000000004e300]
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [4, 4], "data": floats * 4}]})
    assert b"00012345678901234567" in body  # a run of 20 digits
    check_body(body, max_depth=64)
    check_body(
        b"[0.1234567890123456789012345, 1.5E+1234567890123456789, 2e1234567890123456789]", max_depth=64
    )
