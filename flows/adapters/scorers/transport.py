"""The wire under the remote scorers: JSON over HTTP, with errors sorted (gRPC channels: `grpc_channel`).

Errors are sorted in two: a TransientError (the server is down, slow, overloaded or does not have the
model right now: try another server or later) and a RequestError (the server refused this request:
retrying the batch is pointless, splitting it isolates the bad records: `flows.core.scoring`).
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import urllib3

from flows.adapters.scorers.endpoints import TransientError
from flows.adapters.scorers.location import RemoteLocation
from flows.core.errors import ServingError

# Worth trying again: nothing answered, too slow, too busy, or the model is (re)loading.
TRANSIENT_HTTP_STATUS = frozenset({404, 408, 429, 500, 502, 503, 504})


class CaFileUnreadable(ServingError, OSError):
    """The CA file a location names cannot be read as PEM certificates."""


class RequestError(ServingError, ValueError):
    """The server answered, and refused the request."""


def trusted_authorities(location: RemoteLocation) -> bytes | None:
    """The PEM bytes of the location's `ca` file, checked to hold a certificate; None: the system's roots.

    Read when the scorer is built, so a missing or malformed file refuses the model with the path in the
    reason, rather than every request failing its handshake later.
    """
    if location.ca_file is None:
        return None
    try:
        pem = Path(location.ca_file).read_bytes()
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (OSError, UnicodeDecodeError, ValueError) as error:  # ssl.SSLError is an OSError
        raise CaFileUnreadable(f"CA file {location.ca_file!r}: {error}") from error
    return pem


class JsonHttpClient:
    """Keep-alive JSON requests to one server (urllib3 sets TCP_NODELAY, so small requests are not
    delayed)."""

    def __init__(self, scheme: str, address: str, location: RemoteLocation) -> None:
        host, _, port = address.rpartition(":")
        pool_options: dict[str, Any] = {}
        if scheme == "https":
            pem = trusted_authorities(location)
            cadata = pem.decode("ascii") if pem else None
            pool_options["ssl_context"] = ssl.create_default_context(cadata=cadata)
        pool_class = urllib3.HTTPSConnectionPool if scheme == "https" else urllib3.HTTPConnectionPool
        self._pool = pool_class(
            host.strip("[]"),
            int(port),
            maxsize=4,
            block=False,
            timeout=urllib3.Timeout(total=location.timeout_s),
            retries=False,
            **pool_options,
        )
        self._headers = {"Content-Type": "application/json", **dict(location.headers)}
        self.address = address

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer; TransientError or RequestError naming the server, path and reason."""
        payload = None if body is None else json.dumps(body).encode()
        try:
            response = self._pool.request(method, path, body=payload, headers=self._headers)
        except urllib3.exceptions.HTTPError as error:
            raise TransientError(f"{method} {path}: {type(error).__name__}: {error}") from error
        if response.status >= 400:
            text = response.data[:300].decode("utf-8", "replace").strip()
            failure = f"{method} {path}: HTTP {response.status}: {text}"
            raise (
                TransientError(failure) if response.status in TRANSIENT_HTTP_STATUS else RequestError(failure)
            )
        try:
            return json.loads(response.data)
        except ValueError as error:
            raise RequestError(f"{method} {path}: answer is not JSON: {error}") from error

    def close(self) -> None:
        self._pool.close()
