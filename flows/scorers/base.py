"""The scorer interface and the factory that builds scorers from model descriptors.

A scorer turns a batch of (user, product) pairs into one probability per pair with one model call.
Each kind of model registers a builder for its `ModelType`; the dataflow only ever calls
`build_scorer`, so a new kind of scorer plugs in without touching the dataflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from flows.records import ModelDescriptor, ModelType

# What every recommender model takes and returns, wherever it runs: float32 tensors of shape [N, 1].
SIGNATURE = "serving_default"
INPUTS = ("users", "products")
OUTPUT = "predictions"


class ModelLoadError(Exception):
    """A descriptor that cannot become a scorer. The message names the model and the reason.

    `retryable` marks a failure that may pass (a model server that did not answer), so the same
    descriptor is tried again when it is published again rather than refused from memory.
    """

    def __init__(self, model_name: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(f"model {model_name!r} cannot be served: {reason}")
        self.model_name = model_name
        self.reason = reason
        self.retryable = retryable


class ScorerUnavailable(Exception):
    """The scorer could not score the batch at all (its server is down or unreachable).

    Every record of the batch gets this error in its result; there is no point in retrying the
    records one by one, as there is for a batch that one bad record made fail.
    """


class Scorer(Protocol):
    """A loaded model. `source` says where it runs, for result metadata (e.g. "embedded:savedmodel")."""

    source: str

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Probabilities for each pair; inputs and output are 1-D float32 arrays of one length."""
        ...

    def close(self) -> None:
        """Release what the scorer holds (memory, connections). Called once, when it is swapped out."""
        ...


ScorerBuilder = Callable[[ModelDescriptor], Scorer]
_BUILDERS: dict[ModelType, ScorerBuilder] = {}


def register(model_type: ModelType) -> Callable[[ScorerBuilder], ScorerBuilder]:
    """Decorator: make `builder` the way to build scorers for `model_type`."""

    def decorate(builder: ScorerBuilder) -> ScorerBuilder:
        _BUILDERS[model_type] = builder
        return builder

    return decorate


def build_scorer(descriptor: ModelDescriptor) -> Scorer:
    """A scorer for `descriptor`, or ModelLoadError naming the model and the reason."""
    builder = _BUILDERS.get(descriptor.model_type)
    if builder is None:
        supported = ", ".join(sorted(t.value for t in _BUILDERS))
        raise ModelLoadError(
            descriptor.model_name,
            f"model type {descriptor.model_type.value} is not supported (supported: {supported})",
        )
    try:
        return builder(descriptor)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(descriptor.model_name, f"{type(error).__name__}: {error}") from error
