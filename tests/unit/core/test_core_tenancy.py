"""API keys, scopes and the per-tenant token bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inferd.core.errors import (
    ConfigError,
    ForbiddenError,
    InvalidInputError,
    RateLimitedError,
    UnauthenticatedError,
)
from inferd.core.tenancy import (
    PREFIX_SHOWN,
    ApiKey,
    KeyRing,
    KeyScope,
    Principal,
    RateLimiter,
    RuntimeKeys,
    check_tenant,
    key_digest,
    new_key,
    parse_scopes,
)

SECRET = "sk-live-9f8e7d6c5b4a"


def test_parse_valid_keys() -> None:
    ring = KeyRing.parse(f" {SECRET}:acme:predict,jobs ; k2:beta:models;;k3:ops:admin ")
    assert len(ring) == 3
    assert ring.authenticate(SECRET) == Principal("acme", frozenset({"predict", "jobs"}))
    assert ring.authenticate("k2") == Principal("beta", frozenset({"models"}))
    assert ring.authenticate("k3").scopes == frozenset({"admin"})


def test_empty_text_gives_an_empty_ring() -> None:
    assert len(KeyRing.parse("")) == 0
    assert len(KeyRing.parse(" ; ")) == 0


@pytest.mark.parametrize(
    ("text", "position"),
    [
        (f"{SECRET}", 1),
        (f"{SECRET}:acme", 1),
        (f"k1:a:predict;{SECRET}::predict", 2),
        (f"k1:a:predict;k2:b:jobs;{SECRET}:c:", 3),
        (f"{SECRET}:acme:predict:extra", 1),
        (f"k1:a:predict;;{SECRET}:acme:predict,jobz", 3),
        (f"{SECRET}:acme:predict;{SECRET}:other:jobs", 2),
    ],
)
def test_malformed_entries_name_the_position_and_never_the_key(text: str, position: int) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.parse(text)
    message = info.value.message
    assert f"entry {position}" in message
    assert "INFERD_API_KEYS" in message
    assert SECRET not in message
    assert SECRET[:8] not in message


def test_key_with_colons_is_not_echoed() -> None:
    # Five parts: any of them may be a piece of the key, so none is shown as the tenant.
    with pytest.raises(ConfigError) as info:
        KeyRing.parse("sk:part2secret:acme:predict:x")
    assert "part2secret" not in info.value.message


def test_unknown_scope_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.parse(f"{SECRET}:acme:predict,superuser")
    assert "superuser" in info.value.message
    assert "tenant 'acme'" in info.value.message
    assert SECRET not in info.value.message


def test_scopes_and_admin_implies_all() -> None:
    user = Principal("acme", frozenset({KeyScope.PREDICT}))
    user.require(KeyScope.PREDICT)
    for scope in (KeyScope.JOBS, KeyScope.MODELS, KeyScope.ADMIN):
        with pytest.raises(ForbiddenError) as info:
            user.require(scope)
        assert info.value.code == "forbidden"
        assert f"lacks the '{scope.value}' scope" in info.value.message
    admin = Principal("ops", frozenset({KeyScope.ADMIN}))
    for scope in KeyScope:
        admin.require(scope)


def test_scope_wire_names_are_unchanged_and_parse_to_the_enum() -> None:
    assert [scope.value for scope in KeyScope] == ["predict", "jobs", "models", "admin"]
    assert parse_scopes([" jobs", "predict", ""]) == {KeyScope.JOBS, KeyScope.PREDICT}
    assert all(type(scope) is KeyScope for scope in parse_scopes(["jobs", "admin"]))
    with pytest.raises(
        InvalidInputError, match=r"some of \['admin', 'jobs', 'models', 'predict'\]; got \['jobs', 'root'\]"
    ):
        parse_scopes(["jobs", "root"])
    ring = KeyRing.parse("k1:acme:predict,jobs")
    assert all(type(scope) is KeyScope for scope in ring.authenticate("k1").scopes)


@pytest.mark.parametrize("key", [None, "", "wrong", SECRET + "x", SECRET[:-1]])
def test_unknown_or_missing_key_is_unauthenticated(key: str | None) -> None:
    ring = KeyRing.parse(f"{SECRET}:acme:predict")
    with pytest.raises(UnauthenticatedError) as info:
        ring.authenticate(key)
    assert info.value.code == "unauthenticated"


def test_dev_ring_and_merge() -> None:
    ring = KeyRing.parse(f"{SECRET}:acme:predict").merged(KeyRing.dev())
    assert ring.authenticate("dev").scopes == frozenset(KeyScope)
    assert ring.authenticate(SECRET).tenant == "acme"
    assert len(ring) == 2


def test_raw_keys_are_not_kept() -> None:
    ring = KeyRing.parse(f"{SECRET}:acme:predict")
    assert SECRET not in repr(vars(ring))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_burst_then_429_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(default=(2.0, 5.0), clock=clock)  # 2/s, burst 5
    assert limiter.enabled
    for _ in range(5):
        limiter.acquire("acme")
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire("acme")
    assert info.value.code == "rate_limited"
    assert info.value.retry_after_s == 1
    assert "acme" in info.value.message
    clock.now += 0.5  # one token back
    limiter.acquire("acme")
    with pytest.raises(RateLimitedError):
        limiter.acquire("acme")
    clock.now += 100  # refills, but never above the burst
    for _ in range(5):
        limiter.acquire("acme")
    with pytest.raises(RateLimitedError):
        limiter.acquire("acme")


def test_rate_limiter_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(default=(0.1, 1.0), clock=clock)  # one request per 10 s
    limiter.acquire("t")
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire("t")
    assert info.value.retry_after_s == 10
    clock.now += 9.0
    with pytest.raises(RateLimitedError) as later:
        limiter.acquire("t")
    assert later.value.retry_after_s == 1
    clock.now += 1.0
    limiter.acquire("t")


def test_rate_limiter_cost() -> None:
    limiter = RateLimiter(default=(1.0, 10.0), clock=FakeClock())
    limiter.acquire("t", cost=8)
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire("t", cost=3)
    assert info.value.retry_after_s == 1
    limiter.acquire("t", cost=2)


def test_tenants_have_separate_buckets_and_overrides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(default=(1.0, 1.0), overrides={"big": (100.0, 50.0)}, clock=clock)
    limiter.acquire("small-a")
    with pytest.raises(RateLimitedError):
        limiter.acquire("small-a")
    limiter.acquire("small-b")  # another tenant's bucket is untouched
    for _ in range(50):
        limiter.acquire("big")
    with pytest.raises(RateLimitedError):
        limiter.acquire("big")


def test_override_only_limits_just_that_tenant() -> None:
    limiter = RateLimiter(default=None, overrides={"capped": (1.0, 1.0)}, clock=FakeClock())
    assert limiter.enabled
    for _ in range(100):
        limiter.acquire("free")
    limiter.acquire("capped")
    with pytest.raises(RateLimitedError):
        limiter.acquire("capped")


def test_disabled_limiter_never_limits() -> None:
    limiter = RateLimiter(default=None, clock=FakeClock())
    assert not limiter.enabled
    for _ in range(1000):
        limiter.acquire("t")


# -- keys made at run time (the store's, refreshed in the background) -----------------------------------------


def _stored(key: str, tenant: str = "acme", *, expires_at: float | None = None, **fields: object) -> ApiKey:
    return ApiKey(
        id=f"id-{tenant}",
        digest=key_digest(key),
        prefix=key[:PREFIX_SHOWN],
        tenant=tenant,
        scopes=frozenset({"predict"}),
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        expires_at=None if expires_at is None else datetime.fromtimestamp(expires_at, UTC),
        **fields,  # type: ignore[arg-type]
    )


def test_runtime_keys_are_found_after_configured_ones_and_follow_each_refresh() -> None:
    now = [1000.0]
    runtime = RuntimeKeys(clock=lambda: now[0])
    ring = KeyRing.parse(f"{SECRET}:ops:admin").with_runtime(runtime)
    stored = new_key()
    with pytest.raises(UnauthenticatedError):
        ring.authenticate(stored)
    runtime.replace([_stored(stored)])
    assert ring.authenticate(stored) == Principal("acme", frozenset({"predict"}))
    assert ring.authenticate(SECRET).tenant == "ops"  # configured keys keep working
    assert runtime.take_used() == {"id-acme"} and runtime.take_used() == set()
    runtime.replace([])  # revoked: gone from the store's list
    with pytest.raises(UnauthenticatedError, match="revoked"):
        ring.authenticate(stored)


def test_runtime_key_stops_working_at_its_expiry_without_a_refresh() -> None:
    now = [1000.0]
    runtime = RuntimeKeys(clock=lambda: now[0])
    ring = KeyRing({}, runtime)
    stored = new_key()
    runtime.replace([_stored(stored, expires_at=1010.0)])
    assert ring.authenticate(stored).tenant == "acme"
    now[0] = 1010.0
    with pytest.raises(UnauthenticatedError):
        ring.authenticate(stored)
    assert runtime.take_used() == {"id-acme"}  # only the use before the expiry


def test_revoked_rows_are_never_loaded() -> None:
    runtime = RuntimeKeys()
    stored = new_key()
    runtime.replace([_stored(stored, revoked_at=datetime(2024, 1, 2, tzinfo=UTC))])
    with pytest.raises(UnauthenticatedError):
        KeyRing({}, runtime).authenticate(stored)


def test_new_keys_are_distinct_and_carry_the_prefix() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50 and all(key.startswith("ik_") and len(key) > 40 for key in keys)


@pytest.mark.parametrize("tenant", ["", "a b", "-x", "x" * 101, "t\x00"])
def test_bad_tenant_names_are_refused(tenant: str) -> None:
    with pytest.raises(InvalidInputError, match="tenant"):
        check_tenant(tenant)


@pytest.mark.parametrize("scopes", [[], [""], ["predict", "root"]])
def test_bad_scopes_are_refused(scopes: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="scopes"):
        parse_scopes(scopes)
