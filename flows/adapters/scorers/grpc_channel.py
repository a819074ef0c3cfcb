"""gRPC channels for the remote scorers, and their errors sorted as `transport` sorts HTTP's.

A module of its own so that gRPC is imported with the first model served over it (`open_inference`,
`tensorflow_serving`), not by every flow.
"""

from __future__ import annotations

import grpc

from flows.adapters.scorers.endpoints import TransientError
from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.transport import RequestError, trusted_authorities

TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.NOT_FOUND,
    }
)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECONNECT_WITHIN_MS = 1000


def open_channel(address: str, location: RemoteLocation) -> grpc.Channel:
    """A channel to one server (TLS for `grpcs`), allowing model-sized messages both ways.

    Calls fail fast while the server is away (no wait-for-ready), and the channel tries to reconnect
    at least every second (gRPC's default backoff grows to two minutes), so scoring resumes soon
    after a restarted server is back.
    """
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_WITHIN_MS),
    ]
    if location.scheme == "grpcs":
        credentials = grpc.ssl_channel_credentials(root_certificates=trusted_authorities(location))
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def sorted_rpc_error(method: str, error: grpc.RpcError) -> Exception:
    """A TransientError or RequestError for a failed call, naming the method, status and details."""
    code = error.code()  # the RpcError a call raises is also a grpc.Call, which has code() and details()
    failure = f"{method}: gRPC {code.name}: {error.details()}"
    return TransientError(failure) if code in TRANSIENT_GRPC_CODES else RequestError(failure)
