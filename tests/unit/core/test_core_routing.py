"""Version routing: highest version, pinned default, exact weighted split, sticky tenants, routing.yaml."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from inferd.core.errors import ConfigError, ModelNotFoundError
from inferd.core.registry import ModelRegistry
from inferd.core.routing import RoutingPolicy, highest_version, read_routing, version_sort_key
from inferd.runtimes.factory import PipelineFactory


def test_highest_version_sorts_numbers_numerically() -> None:
    assert highest_version(["2", "10", "9"]) == "10"
    assert highest_version(["1", "2"]) == "2"
    assert sorted(["10", "9", "2", "1"], key=version_sort_key) == ["1", "2", "9", "10"]


def test_names_sort_after_numbers() -> None:
    assert highest_version(["10", "beta"]) == "beta"
    assert sorted(["beta", "10", "alpha", "2"], key=version_sort_key) == ["2", "10", "alpha", "beta"]


def test_non_ascii_digits_are_names_not_a_crash() -> None:
    # "²".isdigit() is True but int("²") raises; such a folder must sort as a name.
    assert highest_version(["3", "²"]) == "²"


def test_no_policy_routes_to_the_fallback_highest() -> None:
    policy = RoutingPolicy()
    assert {policy.choose(tenant=f"t{i}", fallback_version="10") for i in range(20)} == {"10"}
    assert policy.describe("10") == {"policy": "highest", "version": "10"}


def test_default_pins_a_version() -> None:
    policy = RoutingPolicy(default="1")
    assert {policy.choose(tenant=f"t{i}", fallback_version="2") for i in range(20)} == {"1"}
    assert policy.describe("2") == {"policy": "pinned", "version": "1"}


def test_weights_give_exact_proportions() -> None:
    policy = RoutingPolicy(weights={"1": 90, "2": 10})
    choices = [policy.choose(tenant="t", fallback_version="2") for _ in range(1000)]
    assert Counter(choices) == {"1": 900, "2": 100}
    # Smooth: every window of 10 consecutive calls, aligned or sliding, has exactly one canary call.
    for start in range(0, len(choices) - 9):
        window = Counter(choices[start : start + 10])
        assert window == {"1": 9, "2": 1}, (start, choices[start : start + 10])


def test_weights_with_three_versions_and_a_zero_weight() -> None:
    policy = RoutingPolicy(weights={"1": 1, "2": 2, "3": 0, "4": 1})
    choices = Counter(policy.choose(tenant="t", fallback_version="4") for _ in range(400))
    assert choices == {"1": 100, "2": 200, "4": 100}
    assert policy.describe("4")["weights"] == {"1": 1, "2": 2, "4": 1}


def test_sticky_tenant_keeps_each_tenant_on_one_version() -> None:
    policy = RoutingPolicy(weights={"1": 50, "2": 50}, sticky="tenant")
    tenants = [f"tenant-{i}" for i in range(60)]
    chosen: dict[str, str] = {}
    for _round in range(20):
        for tenant in tenants:
            version = policy.choose(tenant=tenant, fallback_version="2")
            assert chosen.setdefault(tenant, version) == version
    spread = Counter(chosen.values())
    assert set(spread) == {"1", "2"}  # different tenants land on different versions
    assert min(spread.values()) >= 10


def test_sticky_choice_is_the_same_in_every_replica() -> None:
    # A stable hash (not Python's salted hash()): two policies built independently agree.
    first = RoutingPolicy(weights={"1": 90, "2": 10}, sticky="tenant")
    second = RoutingPolicy(weights={"1": 90, "2": 10}, sticky="tenant")
    for i in range(50):
        assert first.choose(tenant=f"t{i}", fallback_version="2") == second.choose(
            tenant=f"t{i}", fallback_version="2"
        )


# -- routing.yaml through the registry ---------------------------------------------------------


@pytest.fixture
def two_versions(repo: Path, make_echo: Callable[..., Path]) -> Path:
    for version in ("1", "2", "10"):
        make_echo(repo, "m", version)
    return repo


def registry_for(root: Path) -> ModelRegistry:
    registry = ModelRegistry(loader=PipelineFactory(), devices=["cpu"])
    registry.scan(root)
    return registry


def test_registry_routes_to_the_numerically_highest_version(two_versions: Path) -> None:
    registry = registry_for(two_versions)
    assert registry.resolve("m", None, tenant="t").version == "10"
    assert registry.models["m"].default_version == "10"


def test_registry_default_pin(two_versions: Path) -> None:
    (two_versions / "m" / "routing.yaml").write_text("default: 2\n")
    registry = registry_for(two_versions)
    assert registry.problems == []
    assert {registry.resolve("m", None, tenant=f"t{i}").version for i in range(10)} == {"2"}
    assert registry.models["m"].default_version == "2"


def test_registry_weights(two_versions: Path) -> None:
    (two_versions / "m" / "routing.yaml").write_text("weights: {1: 90, 10: 10}\n")
    registry = registry_for(two_versions)
    assert registry.problems == []
    counts = Counter(registry.resolve("m", None, tenant="t").version for _ in range(1000))
    assert counts == {"1": 900, "10": 100}
    assert registry.models["m"].default_version == "1"
    assert registry.models["m"].describe()["routing"]["policy"] == "weighted"


def test_pinned_version_bypasses_routing(two_versions: Path) -> None:
    (two_versions / "m" / "routing.yaml").write_text('weights: {"1": 100}\n')
    registry = registry_for(two_versions)
    assert registry.resolve("m", None, tenant="t").version == "1"
    assert {registry.resolve("m", "2", tenant="t").version for _ in range(10)} == {"2"}
    assert registry.resolve("m", "10", tenant="t").version == "10"
    # Pinned calls do not advance the weighted round-robin either.
    assert Counter(registry.resolve("m", None, tenant="t").version for _ in range(10)) == {"1": 10}


def test_unknown_model_and_version_are_model_not_found(two_versions: Path) -> None:
    registry = registry_for(two_versions)
    with pytest.raises(ModelNotFoundError) as no_model:
        registry.resolve("nope", None, tenant="t")
    assert no_model.value.code == "model_not_found"
    with pytest.raises(ModelNotFoundError) as no_version:
        registry.resolve("m", "3", tenant="t")
    assert "'3'" in no_version.value.message
    assert "1, 2, 10" in no_version.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("default: 7\n", "'7' does not exist"),
        ("weights: {1: 50, 7: 50}\n", "'7'"),
        ("weights: {1: -5, 2: 10}\n", "non-negative"),
        ("weights: {1: 'lots'}\n", "non-negative integer"),
        ("weights: {1: 0.5}\n", "non-negative integer"),
        ("weights: {1: true}\n", "non-negative integer"),
        ("weights: {1: 0, 2: 0}\n", "positive"),
        ("weights: [1, 2]\n", "weights must map"),
        ("weights: {}\n", "weights must map"),
        ("default: 1\nweights: {1: 50, 2: 50}\n", "not both"),
        ("sticky: session\nweights: {1: 1}\n", "sticky"),
        ("defualt: 1\n", "unknown keys"),
        ("- 1\n- 2\n", "mapping"),
        ("weights: {1: 50\n", "cannot read"),
    ],
)
def test_malformed_routing_is_a_config_error_naming_the_file(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_routing(path, ["1", "2"])
    assert str(path) in info.value.message
    assert fragment in info.value.message


def test_malformed_routing_in_the_registry_is_a_problem_and_falls_back_to_highest(
    two_versions: Path,
) -> None:
    routing = two_versions / "m" / "routing.yaml"
    routing.write_text("default: 1\nweights: {1: 50, 2: 50}\n")
    registry = registry_for(two_versions)
    assert [p.path for p in registry.problems] == [str(routing)]
    assert "not both" in registry.problems[0].message
    assert registry.resolve("m", None, tenant="t").version == "10"
    assert any(str(routing) in reason for reason in registry.readiness()[1])
