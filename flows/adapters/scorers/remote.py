"""A scorer that calls a model server: one request per micro-batch, over a pool of servers.

Each protocol (TensorFlow Serving, Open Inference Protocol; REST or gRPC) supplies a client for one
server. This module turns a descriptor's location into a pool of such clients, checks that the model
is there before the scorer is accepted, and closes every connection when the scorer is swapped out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Protocol

import numpy as np

from flows.adapters.scorers.endpoints import EndpointPool
from flows.adapters.scorers.location import LocationError, RemoteLocation, parse_location
from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelDescriptor
from flows.core.errors import ServingError
from flows.core.scorer import INPUTS, OUTPUT, InputBounds, ModelLoadError, ScorerUnavailable


class ServerClient(Protocol):
    """One protocol, one server. Raises TransientError for failures worth retrying elsewhere."""

    def check_model(self) -> None:
        """Ask the server for the model's metadata; ValueError if it does not take users/products."""
        ...

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """One request for the whole batch; the predictions as a 1-D float32 array."""
        ...

    def close(self) -> None: ...


ClientFactory = Callable[[str, RemoteLocation], ServerClient]


def client_factories(
    rest: Callable[[str, str, RemoteLocation], ServerClient], grpc: ClientFactory
) -> dict[str, ClientFactory]:
    """A protocol's clients by URL scheme: `rest(scheme, address, location)` for http(s), `grpc` for both
    gRPC schemes (the channel reads plaintext or TLS from the location)."""
    return {"http": partial(rest, "http"), "https": partial(rest, "https"), "grpc": grpc, "grpcs": grpc}


class RemoteScorer:
    """Scores with whichever server of the pool is up. What ids its model takes is not known here: a
    record the server refuses is found by splitting the batch (`flows.core.scoring`)."""

    input_bounds: InputBounds | None = None

    def __init__(self, source: str, pool: EndpointPool[ServerClient]) -> None:
        self.source = source
        self._pool = pool

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return self._pool.call(lambda client: client.predict(users, products))

    def close(self) -> None:
        for client in self._pool.clients:
            client.close()


class ServerModelMismatch(ServingError, ValueError):
    """The model a server serves does not take `users` and `products` and return `predictions`."""


def check_names(model: str, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    """ServerModelMismatch unless the served model takes `users` and `products` and returns `predictions`."""
    inputs, outputs = set(inputs), set(outputs)
    if not set(INPUTS) <= inputs or OUTPUT not in outputs:
        raise ServerModelMismatch(
            f"server's model {model!r} takes {sorted(inputs)} and returns {sorted(outputs)}; "
            f"expected inputs {list(INPUTS)} and output {OUTPUT!r}"
        )


def build_remote_scorer(
    descriptor: ModelDescriptor,
    protocol: str,
    factories: Mapping[str, ClientFactory],
    policy: AdmissionPolicy,
) -> RemoteScorer:
    """A scorer for a descriptor whose location names servers speaking `protocol` (e.g. "tfserving").

    The model must answer on at least one server; if none answers the descriptor is refused (the
    previous model keeps serving) with a retryable error, so publishing it again later works.
    """
    name = descriptor.model_name
    if not descriptor.model_source_location:
        raise ModelLoadError(name, f"a {protocol} model needs a location (SCHEME://HOST:PORT/models/NAME)")
    try:
        location = parse_location(
            descriptor.model_source_location, policy.remote.max_timeout, policy.remote.max_retries
        )
    except LocationError as error:
        raise ModelLoadError(name, str(error)) from error
    factory = factories.get(location.scheme)
    if factory is None:
        raise ModelLoadError(
            name, f"{protocol} is not served over {location.scheme}:// (use {', '.join(factories)})"
        )
    try:
        clients = {address: factory(address, location) for address in location.endpoints}
    except OSError as error:  # e.g. the location's CA file
        raise ModelLoadError(name, str(error)) from error
    pool = EndpointPool(clients, location.retries)
    scorer = RemoteScorer(f"{protocol}+{location.scheme}://{','.join(location.endpoints)}", pool)
    try:
        pool.call(lambda client: client.check_model())
    except ScorerUnavailable as error:
        scorer.close()
        raise ModelLoadError(
            name, f"no server answered for model {location.model!r}: {error}", retryable=True
        ) from error
    except ValueError as error:
        scorer.close()
        raise ModelLoadError(name, str(error)) from error
    return scorer
