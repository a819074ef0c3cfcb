"""Where a remote model lives: the `modelSourceLocation` of a model-server descriptor, parsed.

One URL names the protocol, one or more servers, the model and how to call it:

    SCHEME://HOST:PORT[,HOST:PORT...][/PREFIX]/models/NAME[/versions/VERSION][?OPTIONS]

SCHEME is `http` or `https` (REST), or `grpc` or `grpcs` (gRPC, plaintext or TLS). Several
comma-separated servers share the load and cover for each other. For REST, PREFIX is kept in the
request path, so a route through a proxy (`/seldon/seldon/tfserving/v1/models/NAME`) works as is; the
server's own paths are `/v1/models/NAME` (TensorFlow Serving) and `/v2/models/NAME` (Open Inference
Protocol).

OPTIONS: `timeout` (seconds per request, default 5), `retries` (extra attempts after a transient
failure, default 2), and `header.KEY=VALUE` (sent as an HTTP header or gRPC metadata on every request,
e.g. `header.seldon=grpc-tfserving&header.namespace=seldon` to route through Seldon and Ambassador),
and for `https`/`grpcs` `ca=PATH` (a PEM file of the certificate authorities to trust instead of the
system's, e.g. a cluster's internal CA mounted from a Secret).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from flows.core.errors import ServingError

SCHEMES = ("http", "https", "grpc", "grpcs")
TLS_SCHEMES = ("https", "grpcs")
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRIES = 2
_MODEL_PATH = re.compile(r"^(?P<prefix>.*?)/?models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


class LocationError(ServingError, ValueError):
    """A model-server location that does not follow the documented format."""


@dataclass(frozen=True, slots=True)
class RemoteLocation:
    """A parsed model-server location."""

    scheme: str
    endpoints: tuple[str, ...]  # "host:port", in the order given
    model: str
    version: str | None
    prefix: str  # path before "models/NAME", without a trailing slash ("" or "/v1", "/proxy/v2", ...)
    timeout_s: float
    retries: int
    headers: tuple[tuple[str, str], ...]
    ca_file: str | None = None  # PEM bundle to verify servers with (TLS schemes only); None: the system's

    @property
    def model_path(self) -> str:
        """`PREFIX/models/NAME[/versions/VERSION]`, the REST path the protocol suffix is appended to."""
        versioned = f"/versions/{self.version}" if self.version else ""
        return f"{self.prefix}/models/{self.model}{versioned}"


def parse_location(
    location: str, max_timeout_s: float = math.inf, max_retries: float = math.inf
) -> RemoteLocation:
    """Parse `location`, or raise LocationError saying what is wrong with it.

    A `timeout` or `retries` over the caps is refused rather than lowered: the publisher learns that the
    location asks for more than the flow allows (SERVING_REMOTE_MAX_TIMEOUT, SERVING_REMOTE_MAX_RETRIES).
    """
    parts = urlsplit(location.strip())
    if parts.scheme not in SCHEMES:
        raise LocationError(f"location {location!r}: scheme must be one of {', '.join(SCHEMES)}")
    endpoints = tuple(endpoint.strip() for endpoint in parts.netloc.split(",") if endpoint.strip())
    if not endpoints:
        raise LocationError(f"location {location!r} names no server")
    for endpoint in endpoints:
        if not _HOST_PORT.match(endpoint):
            raise LocationError(f"location {location!r}: server {endpoint!r} is not HOST:PORT")
    path = _MODEL_PATH.match(parts.path)
    if path is None:
        raise LocationError(f"location {location!r}: path must end in models/NAME[/versions/VERSION]")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    headers = tuple(
        (key.removeprefix("header."), value) for key, value in options.items() if key.startswith("header.")
    )
    unknown = sorted(
        key for key in options if key not in ("timeout", "retries", "ca") and not key.startswith("header.")
    )
    if unknown:
        raise LocationError(f"location {location!r}: unknown option(s) {', '.join(unknown)}")
    ca_file = options.get("ca") or None
    if ca_file and parts.scheme not in TLS_SCHEMES:
        raise LocationError(f"location {location!r}: option ca needs a TLS scheme ({', '.join(TLS_SCHEMES)})")
    try:
        timeout_s = float(options.get("timeout", DEFAULT_TIMEOUT_S))
        retries = int(options.get("retries", DEFAULT_RETRIES))
    except ValueError as error:
        raise LocationError(f"location {location!r}: {error}") from error
    if timeout_s <= 0 or retries < 0:
        raise LocationError(f"location {location!r}: timeout must be > 0 and retries >= 0")
    if timeout_s > max_timeout_s:
        raise LocationError(
            f"location {location!r}: timeout {timeout_s:g} s is over the cap of {max_timeout_s:g} s "
            "(SERVING_REMOTE_MAX_TIMEOUT)"
        )
    if retries > max_retries:
        raise LocationError(
            f"location {location!r}: retries {retries} is over the cap of {max_retries} "
            "(SERVING_REMOTE_MAX_RETRIES)"
        )
    return RemoteLocation(
        scheme=parts.scheme,
        endpoints=endpoints,
        model=path["name"],
        version=path["version"],
        prefix=path["prefix"].rstrip("/"),
        timeout_s=timeout_s,
        retries=retries,
        headers=headers,
        ca_file=ca_file,
    )
