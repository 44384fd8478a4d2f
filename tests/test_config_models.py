"""InferenceModel validation and ModelRegistry: lookup and the weighted choice of a target."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from epp.config import InferenceModel, ModelRegistry
from epp.scheduling.types import Criticality


def model(model_name: str, targets: list[dict[str, Any]] | None = None, **spec: Any) -> InferenceModel:
    body: dict[str, Any] = {"modelName": model_name, "poolRef": {"name": "pool"}, **spec}
    if targets is not None:
        body["targetModels"] = targets
    return InferenceModel.model_validate(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "metadata": {"name": model_name},
            "spec": body,
        }
    )


def test_lookup_and_criticality_default() -> None:
    registry = ModelRegistry([model("a"), model("b", criticality="Critical")])
    a, b = registry.lookup("a"), registry.lookup("b")
    assert a is not None and a.criticality is Criticality.STANDARD
    assert b is not None and b.criticality is Criticality.CRITICAL
    assert registry.lookup("c") is None
    assert sorted(registry) == ["a", "b"] and "a" in registry and len(registry) == 2


def test_null_criticality_means_standard() -> None:
    assert model("a", criticality=None).spec.criticality is Criticality.STANDARD


def test_no_targets_and_unknown_models_keep_their_name() -> None:
    registry = ModelRegistry([model("base")])
    assert registry.choose_target("base", random.Random(0)) == "base"
    assert registry.choose_target("other", random.Random(0)) == "other"


def test_targets_without_weights_share_equally() -> None:
    registry = ModelRegistry([model("m", [{"name": "x"}, {"name": "y"}])])
    rng = random.Random(7)
    counts = Counter(registry.choose_target("m", rng) for _ in range(4000))
    assert set(counts) == {"x", "y"}
    assert 1800 < counts["x"] < 2200


def test_weighted_choice_follows_weights() -> None:
    registry = ModelRegistry([model("m", [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}])])
    rng = random.Random(3)
    counts = Counter(registry.choose_target("m", rng) for _ in range(10000))
    assert 8700 < counts["v1"] < 9300
    assert counts["v1"] + counts["v2"] == 10000


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6).filter(any),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_weighted_choice_never_picks_zero_weight_targets(weights: list[int], seed: int) -> None:
    targets = [{"name": f"t{i}", "weight": w} for i, w in enumerate(weights)]
    registry = ModelRegistry([model("m", targets)])
    rng = random.Random(seed)
    chosen = {registry.choose_target("m", rng) for _ in range(50)}
    allowed = {f"t{i}" for i, w in enumerate(weights) if w > 0}
    assert chosen <= allowed
    if len(allowed) == 1:
        assert chosen == allowed


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([{"name": "a", "weight": 0}], "at least one target needs a positive weight"),
        ([{"name": "a", "weight": 1}, {"name": "b"}], "set weight on every target or on none"),
        (
            [{"name": "a", "weight": 1}, {"name": "a", "weight": 2}],
            "target names must be unique, repeated: a",
        ),
        ([{"name": "a", "weight": 1.5}], "fractional part"),
        ([{"name": "", "weight": 1}], "at least 1 character"),
    ],
)
def test_bad_target_lists(targets: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model("m", targets)


def test_duplicate_model_names_are_rejected_by_the_registry() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        ModelRegistry([model("m"), model("m")])


def test_registry_satisfies_the_request_resolver_protocol() -> None:
    from epp.request import ModelResolver

    resolver: ModelResolver = ModelRegistry([model("m", criticality="Sheddable")])
    spec = resolver.lookup("m")
    assert spec is not None and spec.criticality is Criticality.SHEDDABLE
