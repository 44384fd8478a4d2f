"""ModelRegistry: InferenceModels by served model name, and the weighted choice of a target model."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from epp.config.gie import InferenceModel, InferenceModelSpec


class ModelRegistry:
    """Resolves a request's `model` to its InferenceModel spec and rewrites it to one of its targets."""

    def __init__(self, models: Iterable[InferenceModel] = ()) -> None:
        self._specs: dict[str, InferenceModelSpec] = {}
        for model in models:
            name = model.spec.model_name
            if name in self._specs:
                raise ValueError(f"modelName {name!r} is defined twice")
            self._specs[name] = model.spec

    def __repr__(self) -> str:
        return f"ModelRegistry({sorted(self._specs)})"

    def __eq__(self, other: object) -> bool:  # a config reload tells whether the models changed
        return isinstance(other, ModelRegistry) and self._specs == other._specs

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, model_name: object) -> bool:
        return model_name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def lookup(self, model_name: str) -> InferenceModelSpec | None:
        return self._specs.get(model_name)

    def choose_target(self, model_name: str, rng: random.Random) -> str:
        """One target by weight (zero-weight targets never); the model name itself when it has no targets
        or is not registered."""
        spec = self._specs.get(model_name)
        if spec is None:
            return model_name
        weighted = spec.target_weights()
        if not weighted:
            return model_name
        ticket = rng.randrange(sum(w for _, w in weighted))
        for name, weight in weighted:
            if ticket < weight:
                return name
            ticket -= weight
        raise AssertionError("unreachable: ticket is below the total weight")
