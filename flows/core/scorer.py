"""The scorer interface and the factory that builds scorers from model descriptors.

A scorer turns a batch of (user, product) pairs into one probability per pair with one model call.
Each kind of model registers a builder for its `ModelType`; the dataflow only ever calls
`build_scorer`, so a new kind of scorer plugs in without touching the dataflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from flows.core.admission.descriptor_checks import refusal
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.probe import PROBE_SIZES, probe_batch, probe_problem
from flows.core.admission.unserved_formats import unserved_refusal
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.errors import ServingError
from flows.core.text import cut

# What every recommender model takes and returns, wherever it runs: float32 tensors of shape [N, 1].
SIGNATURE = "serving_default"
INPUTS = ("users", "products")
OUTPUT = "predictions"


class ModelLoadError(ServingError):
    """A descriptor that cannot become a scorer. The message names the model and the reason.

    `retryable` marks a failure that may pass (a model server that did not answer), so the same
    descriptor is tried again when it is published again rather than refused from memory.
    """

    def __init__(self, model_name: str, reason: str, *, retryable: bool = False) -> None:
        reason = cut(reason)
        super().__init__(f"model {cut(model_name, 200)!r} cannot be served: {reason}")
        self.model_name = model_name
        self.reason = reason
        self.retryable = retryable


class ScorerUnavailable(ServingError):
    """The scorer could not score the batch at all (its server is down or unreachable).

    Every record of the batch gets this error in its result; there is no point in splitting the batch
    to find the records that made it fail, as there is for other errors (`flows.core.scoring`).
    """


@dataclass(frozen=True, slots=True)
class InputBounds:
    """The ids a model can take: users 0 to `users` - 1 and products 0 to `products` - 1 (the rows of
    its embeddings). Any other id would be refused by the model, or worse, wrapped or clipped by it to
    some other row and given a score that belongs to nobody."""

    users: int
    products: int


class Scorer(Protocol):
    """A loaded model. `source` says where it runs, for result metadata (e.g. "embedded:savedmodel").

    `input_bounds` is what ids the model can take, when the scorer can tell (an embedded model's
    embeddings); None when it cannot (a model behind a server): records are checked against it before
    the call (`flows.core.scoring`), so an id outside it costs an error for its record, not a failed call.
    """

    source: str
    input_bounds: InputBounds | None

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Probabilities for each pair; inputs and output are 1-D float32 arrays of one length."""
        ...

    def close(self) -> None:
        """Release what the scorer holds (memory, connections). Called once, when it is swapped out."""
        ...


ScorerBuilder = Callable[[ModelDescriptor, AdmissionPolicy], Scorer]
_BUILDERS: dict[ModelType, ScorerBuilder] = {}


def register(model_type: ModelType) -> Callable[[ScorerBuilder], ScorerBuilder]:
    """Decorator: make `builder` the way to build scorers for `model_type`."""

    def decorate(builder: ScorerBuilder) -> ScorerBuilder:
        _BUILDERS[model_type] = builder
        return builder

    return decorate


def build_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy | None = None) -> Scorer:
    """A scorer for `descriptor` that passed admission, or ModelLoadError naming the model and the reason.

    Admission: the descriptor checks (size, names, signature, local roots), the builder of its type
    (which bounds its own costs), then a probe batch whose scores must be one finite float per pair
    within the output range. This is slow (seconds for a SavedModel): call it off the dataflow's step.
    """
    policy = policy if policy is not None else AdmissionPolicy()
    name = descriptor.model_name
    refused = refusal(descriptor, policy) or unserved_refusal(descriptor)
    if refused:
        raise ModelLoadError(name, refused)
    builder = _BUILDERS.get(descriptor.model_type)
    if builder is None:
        supported = ", ".join(sorted(t.value for t in _BUILDERS))
        raise ModelLoadError(
            name, f"model type {descriptor.model_type.value} is not supported (supported: {supported})"
        )
    if descriptor.model_type not in policy.types:
        served = ",".join(t.value for t in policy.types)
        kind = descriptor.model_type.value
        raise ModelLoadError(name, f"model type {kind} is not served here (SERVING_MODEL_TYPES={served})")
    try:
        scorer = builder(descriptor, policy)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(name, f"{type(error).__name__}: {error}") from error
    _probe(name, scorer, policy)
    return scorer


def _probe(name: str, scorer: Scorer, policy: AdmissionPolicy) -> None:
    """One call per size of `PROBE_SIZES`, ids spread over the model's range: each answer must be fit."""
    bounds = scorer.input_bounds
    for pairs in PROBE_SIZES:
        users, products = (
            probe_batch(bounds.users, bounds.products, pairs) if bounds else probe_batch(pairs=pairs)
        )
        try:
            scores = scorer.score(users, products)
        except ScorerUnavailable as error:
            scorer.close()
            raise ModelLoadError(name, f"probe: {error}", retryable=True) from error
        except Exception as error:
            scorer.close()
            raise ModelLoadError(
                name, f"probe: scoring {pairs} pairs failed: {type(error).__name__}: {error}"
            ) from error
        problem = probe_problem(scores, users.size, policy)
        if problem:
            scorer.close()
            raise ModelLoadError(name, problem)
