"""Models as the model stream describes them: how each is served (`ModelType`), the descriptor of a model or
of a command about one (`ModelDescriptor`), the words of an experiment, and one spelling of a location."""

from __future__ import annotations

import enum
import hashlib
import posixpath
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from flows.core.snapshot_compat import restore_with_defaults
from flows.core.vocabulary import Command, Mode, Role

_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_location(location: str) -> str:
    """`location` written one way: a local path (plain or file://) normalised (`.`, `..`, repeated and
    trailing slashes), a URL with its scheme and host in lower case, its default port and trailing slash
    dropped. Syntax only: nothing is looked up, so it costs microseconds on the step."""
    if not location:
        return ""
    parsed = urlsplit(location)
    if not parsed.scheme or parsed.scheme.lower() == "file":
        path = posixpath.normpath(parsed.path if parsed.scheme else location)
        return "/" + path.lstrip("/") if path.startswith("//") else path
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        return location  # not a valid URL: refused later, by the scorer that parses it
    host = (parsed.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parsed.username or parsed.password:
        return location  # credentials in a URL: kept verbatim, never rewritten
    path = posixpath.normpath(parsed.path) if parsed.path not in ("", "/") else ""
    return urlunsplit((scheme, netloc, path, parsed.query, parsed.fragment))


class ModelType(enum.Enum):
    """How a model is served. Symbols and order follow the Avro enum `ModelType`."""

    UNKNOWN = "UNKNOWN"
    TENSORFLOW = "TENSORFLOW"
    TENSORFLOWSAVED = "TENSORFLOWSAVED"
    TENSORFLOWSERVING = "TENSORFLOWSERVING"
    PMML = "PMML"
    H2O = "H2O"
    # Added after the original's symbols (readers on an earlier schema read them as UNKNOWN):
    OPENINFERENCE = "OPENINFERENCE"  # V2 servers (MLServer, KServe, Triton)
    ONNX = "ONNX"  # an ONNX model run in process by ONNX Runtime


# The words of an experiment, as the descriptor's fields hold them (see `flows.core.vocabulary`).
CHAMPION, CHALLENGER = Role.CHAMPION, Role.CHALLENGER
SHADOW, CANARY = Mode.SHADOW, Mode.CANARY
PROMOTE, RETIRE = Command.PROMOTE, Command.RETIRE


@dataclass(frozen=True, slots=True)
class ModelDescriptor:
    """A model to serve: inline bytes (a SavedModel or ONNX archive) or a location; or a command about one.

    `role` is `champion` (it answers every record: the default) or `challenger`, run beside the champion in
    `mode` `shadow` (it scores a `fraction` of the records, results keep the champion's scores) or `canary`
    (a `fraction` of users, chosen by a sticky hash, get its results). A descriptor with a `command`
    (`promote`, `retire`) carries no model: it acts on the challenger named `model_name` (see
    `flows.core.challenger`).
    """

    model_name: str
    description: str
    model_type: ModelType
    model_bytes: bytes | None = None
    model_source_location: str | None = None
    signature: bytes = b""  # Ed25519, see flows.core.admission.signing; not part of the digest
    role: str = CHAMPION
    mode: str = ""
    fraction: float = 1.0
    command: str = ""
    # Freshness (signed; see flows.core.admission.freshness): a number that grows with every message a signer
    # publishes (the tools use the issue time in microseconds), and an optional expiry, ms since the epoch.
    sequence: int = 0
    expires_at: int = 0
    # A command's exact target: the digest of the challenger it promotes or retires.
    target_digest: str = ""

    def __setstate__(self, state: tuple) -> None:
        restore_with_defaults(self, state)  # snapshots from before the challenger or freshness fields

    @property
    def digest(self) -> str:
        """Identity of the model's content: equal digests mean the same scorer can be reused. Two spellings
        of one location (`/m/1`, `/m//1/`, `file:///m/x/../1`; `HTTP://Host:80/v2`) are one model."""
        hasher = hashlib.sha256()
        hasher.update(self.model_type.value.encode())
        hasher.update(b"\0")
        hasher.update(self.model_bytes or b"")
        hasher.update(b"\0")
        hasher.update(canonical_location(self.model_source_location or "").encode())
        return hasher.hexdigest()[:16]

    @property
    def is_challenger(self) -> bool:
        return self.role == CHALLENGER and not self.command

    def experiment(self) -> str:
        """How the model is to serve, in words: "champion", "shadow challenger on 50% of records", ..."""
        if self.command:
            return f"{self.command} {self.model_name!r}"
        if not self.is_challenger:
            return CHAMPION
        population = "records" if self.mode == SHADOW else "users"
        return f"{self.mode} challenger on {self.fraction * 100:g}% of {population}"

    def __repr__(self) -> str:
        size = len(self.model_bytes) if self.model_bytes else 0
        role = "" if self.role == CHAMPION and not self.command else f", {self.experiment()}"
        return (
            f"ModelDescriptor({self.model_name!r}, {self.model_type.value}, "
            f"bytes={size}, location={self.model_source_location!r}{role})"
        )
